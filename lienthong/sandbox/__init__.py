"""Runnable stand-ins for the external systems, speaking their real protocols, with fault switches."""
