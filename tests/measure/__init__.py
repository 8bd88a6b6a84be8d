"""Tests of study/measure: the gate, the guard, paired timing, hostile candidates and faults."""
