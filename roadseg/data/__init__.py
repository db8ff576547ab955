"""Data sets, their class files, the paired image+label transforms and the training batches."""
