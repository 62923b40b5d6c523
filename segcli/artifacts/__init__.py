"""segcli's file formats, one module each: `folders` (the run, k-fold and tune folders' file names, run.json),
`model_info` (the model description checkpoints and exports share), `checkpoints` (checkpoints and the
training state, read safely), `exports` (export sidecars and file names).

Files are written through `segcli.files` (atomic, fsynced). torch is imported inside the functions that read
checkpoints, so the torch-free commands can use the folders' names.
"""
