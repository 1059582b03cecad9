"""Validation before every push: what fails is quarantined with its reasons and never leaves."""
