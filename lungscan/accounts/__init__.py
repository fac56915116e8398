"""Clinicians' accounts: ID tokens, and each care team's patient history."""
