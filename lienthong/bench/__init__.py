"""``lienthong bench``: how fast the dossier route runs end to end, against two yardsticks.

The figures only mean something beside the naive way of doing the same work (one call, one
signature, one validation per record) and the floor (reading the rows and hashing them, which no
pipeline can beat); so one run measures all three, in a private world of its own.
"""
