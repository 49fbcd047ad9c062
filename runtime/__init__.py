"""What training, evaluation and the benchmark share with the process around them: one-line user
errors (`errors`), atomic files and safe checkpoint loads (`checkpoints`), the device, seeds and
random streams (`device`), numeric precision and memory layout (`precision`), and --help layout
(`help`)."""
