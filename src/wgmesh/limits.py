"""Explicit limits on what wgmesh reads and writes, each reported as an input error.

They bound the time and memory a hostile or mistaken input can cost the controller (and a
pipeline that runs on every pull request), and the size of what a host must load. The
figures are far above what a real mesh needs; docs/security.md lists them.
"""

# Input files (mesh.yml, the lockfile, a policy): bytes, nesting depth, YAML aliases.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_POLICY_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 1000
# A number in a policy is at most this many characters (Python refuses to convert very long
# ones, and no field needs more).
MAX_NUMBER_CHARS = 32
# Free text (descriptions): characters.
MAX_TEXT = 1024
# Output: set elements in one host's ruleset. Loading grows faster than linearly (nft -c on
# this project's 2-core machine: 20,000 elements 3 s, 48,000 16 s, 131,000 127 s); a policy
# that needs more should name port ranges, not long lists of single ports.
MAX_HOST_ELEMENTS = 50_000
