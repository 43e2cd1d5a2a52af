"""The GPU acceptance run's parts: the check list and its time boxes (`core`), the parent's loop (`runner`), the
worker-start probe (`worker_start`), the evidence archive (`evidence`), the outputs (`tables`), NVML read without
torch (`nvml`), shared GPU helpers (`gpu`), and one module per check. Importing this package imports nothing heavy:
every check module imports torch and diffusers inside its functions, so a dry run works on a machine that lacks them."""
