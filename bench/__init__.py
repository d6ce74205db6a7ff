"""execgate's benchmarks, run by hand (never timed in the tests): ``python -m bench`` compares
execgate side by side with the in-process floor and SWE-ReX in one run."""
