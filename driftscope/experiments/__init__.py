"""Experiments over several runs: ``compare`` (arms x seeds, paired table), ``reproduce`` (the
paper's observation on the embedded data) and their text reports."""
