"""The board farm on labgrid: leases (reserve, lock, release) on places of a labgrid coordinator, the janitor that
frees the locks of runs that are gone, and ``mali-hil farm run`` (the suite on every matching board at once).

labgrid is the lock server, scheduler and board registry; mali-hil only drives ``labgrid-client`` (labgrid has no
supported Python client API). Importing this package imports no labgrid, tinygrad or numpy.
"""
