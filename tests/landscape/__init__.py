"""Tests of recorded landscapes: the table format, study.record and study.replay."""
