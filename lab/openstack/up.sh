# The OpenStack part of lab/up, sourced by it (needs lib.sh, $pki with the lab CA, issue_leaf).
# Not run on its own.
#
#   openstack_start    Keystone and Glance start first: their Python imports take seconds, and the
#                      rest of the lab comes up meanwhile
#   openstack_finish   waits for Keystone, shapes it (bootstrap.py), starts the fakes, waits for all
#   openstack_env      prints the lab.env lines
#
# Keystone and Glance run under gunicorn from the venv lab/build made. oslo.config parses sys.argv, so
# gunicorn gets its settings from a config file named in GUNICORN_CMD_ARGS, never from arguments. Both
# are wrapped by serialized.py: sqlite takes one writer at a time.
# Their databases are copied from templates made at build time (schema and Keystone's bootstrap).

openstack_start() {
  os_home=$(openstack_home)
  os_venv="$os_home/venv/bin"
  os_dir="$LAB_STATE/openstack"
  [[ -f $os_home/.complete ]] || die "the OpenStack venv is missing: run lab/build openstack"
  issue_leaf openstack openstack
  mkdir -p "$os_dir"/keystone/{fernet,credential} "$os_dir"/glance/{store,staging,tasks} "$os_dir"/fakes
  cp "$os_home/templates/keystone.db" "$os_dir/keystone/keystone.db"
  cp "$os_home/templates/glance.db" "$os_dir/glance/glance.db"
  # WAL: readers (a long image download) never block the one writer (see serialized.py).
  python3 -c 'import sqlite3, sys
for db in sys.argv[1:]: sqlite3.connect(db).execute("PRAGMA journal_mode=WAL").fetchall()' \
    "$os_dir/keystone/keystone.db" "$os_dir/glance/glance.db"
  # Fernet keys are 32 random bytes in urlsafe base64: what `keystone-manage fernet_setup` writes,
  # without its seconds of imports.
  python3 -c 'import base64, os, sys
for d in sys.argv[1:]:
    for i in "01":
        open(os.path.join(d, i), "wb").write(base64.urlsafe_b64encode(os.urandom(32)))' \
    "$os_dir/keystone/fernet" "$os_dir/keystone/credential"
  chmod -R go-rwx "$os_dir/keystone"
  read -r keystone_port glance_port fakes_port < <(free_ports 3)
  os_admin_password=$(openssl rand -hex 12)
  os_importer_password=$(openssl rand -hex 12)
  os_glance_password=$(openssl rand -hex 12)
  os_fakes_password=$(openssl rand -hex 12)
  keystone_url="https://127.0.0.1:$keystone_port"
  glance_url="http://127.0.0.1:$glance_port"
  fakes_url="https://127.0.0.1:$fakes_port"

  cat >"$os_dir/keystone/keystone.conf" <<EOF
[DEFAULT]
use_stderr = true
[database]
connection = sqlite:///$os_dir/keystone/keystone.db
[token]
provider = fernet
expiration = ${VM_IMPORT_LAB_OS_TOKEN_SECONDS:-3600}
[fernet_tokens]
key_repository = $os_dir/keystone/fernet
[fernet_receipts]
key_repository = $os_dir/keystone/fernet
[credential]
key_repository = $os_dir/keystone/credential
[identity]
# bcrypt's minimum cost: lab passwords only, and every login in the tests stays fast.
password_hash_rounds = 4
EOF
  cat >"$os_dir/keystone/gunicorn.conf.py" <<EOF
bind = "127.0.0.1:$keystone_port"
workers = 1
threads = 8
pythonpath = "$LAB_ROOT/openstack"
wsgi_app = "serialized:application"
raw_env = ["LAB_WSGI_APP=keystone.wsgi.api:application"]
certfile = "$pki/openstack.crt"
keyfile = "$pki/openstack.key"
EOF
  OS_KEYSTONE_CONFIG_DIR="$os_dir/keystone" OS_KEYSTONE_CONFIG_FILES=keystone.conf \
    GUNICORN_CMD_ARGS="--config $os_dir/keystone/gunicorn.conf.py" start_daemon keystone "$os_venv/gunicorn"

  cp "$os_home/venv/etc/glance/glance-api-paste.ini" "$os_dir/glance/"
  cat >"$os_dir/glance/glance-api.conf" <<EOF
[DEFAULT]
use_stderr = true
enabled_backends = fs:file
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $os_dir/glance/store
[os_glance_staging_store]
filesystem_store_datadir = $os_dir/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = $os_dir/glance/tasks
[database]
connection = sqlite:///$os_dir/glance/glance.db
[paste_deploy]
flavor = keystone
[keystone_authtoken]
www_authenticate_uri = $keystone_url
auth_url = $keystone_url
cafile = $pki/ca.crt
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = $os_glance_password
EOF
  cat >"$os_dir/glance/gunicorn.conf.py" <<EOF
bind = "127.0.0.1:$glance_port"
workers = 1
threads = 8
timeout = 300
pythonpath = "$LAB_ROOT/openstack"
wsgi_app = "serialized:application"
raw_env = ["LAB_WSGI_APP=glance.wsgi.api:application"]
EOF
  OS_GLANCE_CONFIG_DIR="$os_dir/glance" GUNICORN_CMD_ARGS="--config $os_dir/glance/gunicorn.conf.py" \
    start_daemon glance "$os_venv/gunicorn"
}

openstack_finish() {
  wait_for keystone 60 curl -fsS --cacert "$pki/ca.crt" "$keystone_url/v3"
  # RegionTwo has only Keystone: a client asking it for compute must get a clear "no endpoint".
  cat >"$os_dir/bootstrap.json" <<EOF
{"keystone": "$keystone_url", "cafile": "$pki/ca.crt", "adminPassword": "lab-bootstrap",
 "newAdminPassword": "$os_admin_password", "extraRegions": ["RegionTwo"],
 "services": [
  {"type": "identity", "name": "keystone", "region": "RegionOne", "url": "$keystone_url/v3"},
  {"type": "identity", "name": "keystone", "region": "RegionTwo", "url": "$keystone_url/v3"},
  {"type": "compute", "name": "nova", "region": "RegionOne", "url": "$fakes_url/compute/v2.1"},
  {"type": "volumev3", "name": "cinderv3", "region": "RegionOne", "url": "$fakes_url/volume/v3/\$(project_id)s"},
  {"type": "network", "name": "neutron", "region": "RegionOne", "url": "$fakes_url/network"},
  {"type": "image", "name": "glance", "region": "RegionOne", "url": "$fakes_url/image"}],
 "glancePassword": "$os_glance_password", "fakesPassword": "$os_fakes_password",
 "importerPassword": "$os_importer_password"}
EOF
  "$os_venv/python3" "$LAB_ROOT/openstack/bootstrap.py" "$os_dir/bootstrap.json" "$os_dir/accounts.json" \
    >"$LAB_STATE/logs/openstack-bootstrap.log" 2>&1 \
    || { cat "$LAB_STATE/logs/openstack-bootstrap.log" >&2; die "Keystone bootstrap failed"; }
  chmod 600 "$os_dir/bootstrap.json" "$os_dir/accounts.json"
  cat >"$os_dir/fakes/config.json" <<EOF
{"port": $fakes_port, "certFile": "$pki/openstack.crt", "keyFile": "$pki/openstack.key", "caFile": "$pki/ca.crt",
 "keystoneUrl": "$keystone_url", "glanceUrl": "$glance_url", "dataDir": "$os_dir/fakes",
 "fakesUser": "fakes", "fakesPassword": "$os_fakes_password", "adminPassword": "$os_admin_password",
 "projects": {"migrations": "$(os_field projectId)", "elsewhere": "$(os_field altProjectId)"},
 "defaultProject": "migrations"}
EOF
  chmod 600 "$os_dir/fakes/config.json"
  start_daemon openstack-fakes "$os_venv/python3" "$LAB_ROOT/openstack/fakes.py" --config "$os_dir/fakes/config.json"
  wait_for glance 60 curl -fsS "$glance_url/versions"
  # The control API wants basic auth: the credentials go to curl on stdin, not argv.
  wait_for openstack-fakes 30 bash -c 'printf "user = \"admin:%s\"\n" "$1" | curl -fsS --cacert "$2" -K - "$3/lab/health"' \
    _ "$os_admin_password" "$pki/ca.crt" "$fakes_url"
}

os_field() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$os_dir/accounts.json" "$1"
}

openstack_env() {
  cat <<EOF
export OS_AUTH_URL='$keystone_url/v3'
export OS_IDENTITY_API_VERSION='3'
export OS_REGION_NAME='RegionOne'
export OS_INTERFACE='public'
export OS_USERNAME='importer'
export OS_PASSWORD='$os_importer_password'
export OS_PROJECT_NAME='migrations'
export OS_USER_DOMAIN_NAME='lab'
export OS_PROJECT_DOMAIN_NAME='lab'
export OS_CACERT='$pki/ca.crt'
export OPENSTACK_PROJECT_ID='$(os_field projectId)'
export OPENSTACK_ALT_PROJECT_ID='$(os_field altProjectId)'
export OPENSTACK_APP_CRED_ID='$(os_field appCredId)'
export OPENSTACK_APP_CRED_SECRET='$(os_field appCredSecret)'
export OPENSTACK_ADMIN_PASSWORD='$os_admin_password'
export OPENSTACK_CONTROL_URL='$fakes_url/lab'
export OPENSTACK_GLANCE_STORE='$os_dir/glance/store'
EOF
}
