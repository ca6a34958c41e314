"""Every test sees the repository's ansible.cfg, set before Ansible reads its config."""

import os
from pathlib import Path

os.environ["ANSIBLE_CONFIG"] = str(Path(__file__).resolve().parents[1] / "ansible.cfg")
