"""The compile stage: a loaded mesh and policy in, each host's output out.

``resolve`` resolves the mesh once (identities, approvals, every rule); ``filters`` makes a
host's set elements from the resolved rules and ``paths`` how it reaches each peer;
``compiler`` puts a host's output (``hostoutput``, what the renderers read) together.
``evaluate`` answers single packets from identities alone, so the property test can hold
the filters to it.
"""
