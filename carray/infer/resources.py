"""What each stage's task asks Ray for. The numbers are chosen against Ray Data's fusing rules."""

# Decoding asks for about half a CPU, like CPU actors: a node with one CPU then always fits an actor
# and a task (whole-CPU tasks next to half-CPU actors on 1-CPU nodes are never scheduled). Not
# exactly the actors' 0.5: Ray Data fuses consecutive stages whose resources are equal, and decoding
# fused into the actors would keep every tile of a large image on the actor that decoded it and
# stop decoding from running ahead of restoring (test_multinode checks the actors' class name).
READ_CPUS = {"num_cpus": 0.49}
# Reading keys, planning and writing ask for less: Ray Data fuses consecutive stages with the same
# resources into one task, and one task must not decode every image of a 100 k-key listing part by itself.
PLAN_CPUS = {"num_cpus": 0.25}
