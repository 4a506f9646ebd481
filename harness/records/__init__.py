"""Plain records that cross process and machine boundaries: a load job, its result, and the file they go to."""
