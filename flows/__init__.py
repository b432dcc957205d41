"""quantbench's flows: composition of the stages in ``tasks``, and the command line."""
