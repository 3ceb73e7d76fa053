"""`kdistill grid`: a methods x pairs x seeds grid of runs from one command, locally or on SLURM.

spec.py reads the spec and expands it into runs, run.py plans them against the disk and reports,
launch.py starts them as local processes, slurm.py as submitit jobs."""
