"""Worker pools: the scheduler, the thread and process backends and the child process's main.

The runtime drives the model contract (:mod:`embellama.model.contract`) without knowing what a model computes.
"""
