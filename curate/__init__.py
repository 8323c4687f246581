"""curate: the curation half of storyloom as a plain library (no Beam).

One module per step at the root; ``scenes/`` (scene splitting), ``shapes/`` (the shapes world)
and ``training/`` (the trainers of the shipped models). See ARCHITECTURE.md.
"""
