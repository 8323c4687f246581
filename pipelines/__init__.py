"""Apache Beam pipelines of storyloom: curation (``pipelines.curate``) and batch rendering
(``pipelines.storygen``).

The only package that imports ``apache_beam``; it does so in its submodules, so that the
isolated decoder process (``pipelines.isolation`` running ``curate.decode``) starts without it.
"""
