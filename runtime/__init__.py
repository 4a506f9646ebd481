"""What every board runs, real or emulated: the supervisor that starts a process apart and says how it ended, the
RAM enforcers, the memory meter, the reader of the OpenCL layer's counters, the board-side end of a remote
transport, and the one verdict that turns their evidence into a job's status. Imports nothing of the harness."""
