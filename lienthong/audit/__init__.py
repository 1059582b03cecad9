"""The run ledger: what each run pulled, quarantined, signed, pushed and got acknowledged."""
