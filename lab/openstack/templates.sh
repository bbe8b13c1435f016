#!/usr/bin/env bash
# Makes the template databases lab/up copies: Keystone's (schema plus `keystone-manage bootstrap`: the
# admin user and project, the roles, RegionOne; no endpoints, their ports are chosen at lab/up) and
# Glance's (schema only). The bootstrap admin password is a placeholder lab/up replaces at once.
#   templates.sh HOME     (HOME/venv is the installed venv; writes HOME/templates/)
set -euo pipefail
home=$1
t="$home/templates"
rm -rf "$t" && mkdir -p "$t/fernet"
venv="$home/venv/bin"
# bootstrap reads the fernet key repositories; throw-away keys (lab/up makes fresh ones per lab).
python3 -c 'import base64,os,sys
for i in "01": open(os.path.join(sys.argv[1], i), "wb").write(base64.urlsafe_b64encode(os.urandom(32)))' "$t/fernet"
cat >"$t/keystone.conf" <<CONF
[database]
connection = sqlite:///$t/keystone.db
[fernet_tokens]
key_repository = $t/fernet
[fernet_receipts]
key_repository = $t/fernet
[credential]
key_repository = $t/fernet
CONF
"$venv/keystone-manage" --config-file "$t/keystone.conf" db_sync >"$t/keystone-db_sync.log" 2>&1
"$venv/keystone-manage" --config-file "$t/keystone.conf" bootstrap --bootstrap-password lab-bootstrap \
  --bootstrap-region-id RegionOne >"$t/keystone-bootstrap.log" 2>&1
cat >"$t/glance-api.conf" <<CONF
[database]
connection = sqlite:///$t/glance.db
CONF
"$venv/glance-manage" --config-file "$t/glance-api.conf" db_sync >"$t/glance-db_sync.log" 2>&1
rm -rf "$t/fernet" "$t/keystone.conf" "$t/glance-api.conf"
