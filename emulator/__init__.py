"""An emulated ARM Mali OpenCL device: PoCL behind mali-hil's own OpenCL layer."""
