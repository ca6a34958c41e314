#!/usr/bin/env bash
# Developer and CI entry points (run as root on Debian 12):
#   ./dev.sh install   apt packages + .venv with the pinned Python packages
#   ./dev.sh demo      install, bring the lab up, run site.yml on it, show the result
#   ./dev.sh test      install, then lint and every test (unit and real-lab)
#   ./dev.sh lint      ruff and ansible-lint only
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(wireguard-tools wireguard-go nftables openssh-server openssh-client iproute2
              netcat-openbsd util-linux procps python3 python3-venv tcpdump iputils-ping
              iperf3 chromium dnsmasq-base python3-nacl git debootstrap systemd-container
              conntrack zsh graphviz prometheus)
PYTHON=${PYTHON:-python3}
VENV=.venv

# A venv of interpreter $1 in folder $2 with the pinned packages, constraints file $3
# (default constraints.txt); made again when pyproject.toml or constraints.txt change.
pinned_venv() {
    local py=$1 venv=$2 constraints=${3:-constraints.txt}
    if [[ ! -f $venv/.wgmesh-installed || pyproject.toml -nt $venv/.wgmesh-installed
          || constraints.txt -nt $venv/.wgmesh-installed ]]; then
        echo "== python: installing the pinned packages in $venv"
        [[ -x $venv/bin/python ]] || "$py" -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -c "$constraints" -e '.[test]'
        touch "$venv/.wgmesh-installed"
    fi
}

install() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        echo "== apt: installing ${missing[*]}"
        apt-get update -qq
        # No recommends: wireguard recommends a kernel image, which the lab does not need.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    "$PYTHON" -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 13), sys.version' \
        || { echo "wgmesh needs Python 3.11 to 3.13; set PYTHON=" >&2; exit 2; }
    pinned_venv "$PYTHON" "$VENV"
    "$VENV/bin/ansible-galaxy" install -r requirements.yml >/dev/null
}

# The other Pythons wgmesh supports (pyproject's requires-python): the test command installs
# the pinned packages into a venv for each that the machine has, and runs the unit tests.
OTHER_PYTHONS=(3.12 3.13)

find_python() {  # a runnable interpreter of version $1 (PATH, then pyenv's versions)
    local p
    for p in "python$1" "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/"$1".*/bin/python; do
        if "$p" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$1')" \
                2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

other_pythons() {
    local v py
    for v in "${OTHER_PYTHONS[@]}"; do
        py=$(find_python "$v")
        if [[ -z $py ]]; then
            echo "== python $v: not on this machine, so not tested here"
            continue
        fi
        echo "== python $v ($py): install the pinned packages, run the unit tests"
        pinned_venv "$py" ".venv-$v"
        ".venv-$v/bin/pytest" tests/unit -q -p no:cacheprovider
    done
}

# The oldest ansible-core of pyproject's range (the newest is constraints.txt's): the test
# command installs it in a venv of its own and runs the unit tests and one lab run on it.
OLDEST_ANSIBLE=(ansible-core==2.18.19 resolvelib==1.0.1)

oldest_ansible() {
    local venv=.venv-ansible-oldest
    local constraints=.constraints-ansible-oldest.txt
    echo "== ${OLDEST_ANSIBLE[0]}: install, run the unit tests and the mesh's lab run"
    grep -v -e '^ansible-core==' -e '^resolvelib==' constraints.txt > "$constraints"
    printf '%s\n' "${OLDEST_ANSIBLE[@]}" >> "$constraints"
    pinned_venv "$PYTHON" "$venv" "$constraints"
    "$venv/bin/python" -c 'import ansible.release as r; print("ansible-core", r.__version__)'
    "$venv/bin/pytest" tests/unit tests/lab/test_mesh.py -q -p no:cacheprovider
}

activate() {
    export PATH=$PWD/$VENV/bin:$PATH ANSIBLE_CONFIG=$PWD/ansible.cfg
}

demo() {
    install; activate
    wgmesh lab up
    ansible-playbook site.yml
    # Lab hosts have no systemd to run the NAT traversal agent and the monitor: the lab starts them.
    wgmesh lab agents
    sleep 5  # home1 and branch1 punch a direct path meanwhile
    echo "== what the mesh looks like now (playbooks/status.yml)"
    ansible-playbook playbooks/status.yml
    echo "== home1 pings branch1, both behind NAT: the rule, the path, what both hosts see"
    wgmesh why home1 branch1 --live
    echo
    echo "The lab stays up: try '.venv/bin/ansible-playbook site.yml' again (changed=0),"
    echo "'.venv/bin/wgmesh lab exec home1 -- wg show', or edit policies/lab.hujson and re-run."
    echo "Take it down with: .venv/bin/wgmesh lab down"
}

lint() {
    activate
    echo "== ruff"
    ruff check src plugins tests benchmarks
    echo "== ansible-lint (production profile)"
    ansible-lint
}

run_tests() {
    install; lint
    echo "== pytest (unit and lab)"
    local rc=0
    pytest tests "$@" || rc=$?
    # 5 = no tests collected: not a failure of the code, but say so loudly.
    if ((rc == 5)); then echo "pytest collected no tests"; rc=0; fi
    ((rc == 0)) || return $rc
    echo "== molecule test (the default scenario, then systemd; each on its own lab)"
    molecule test
    molecule test -s systemd
    other_pythons
    oldest_ansible
}

case ${1:-} in
    install) install ;;
    demo) demo ;;
    test) shift; run_tests "$@" ;;
    lint) lint ;;
    *) sed -n '2,7p' "$0"; exit 2 ;;
esac
