"""Tests of the search: samplers, the ledger they share, the surrogate."""
