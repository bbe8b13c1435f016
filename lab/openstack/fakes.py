"""Stateful fakes of the OpenStack Nova, Cinder and Neutron APIs for the vm-import lab, plus a
fault-injecting proxy in front of the lab's real Glance and a control API for tests.

One HTTPS port serves:
  /compute/v2.1/...             Nova (servers, flavors, os-stop, createImage, os-volume_attachments)
  /volume/v3/{project_id}/...   Cinder (volumes, snapshots, os-volume_upload_image)
  /network/v2.0/...             Neutron (networks, ports)
  /image/...                    the real Glance, proxied (download cuts, recorded requests)
  /lab/...                      control API (basic auth: the lab's OpenStack admin user)

Every service call needs an X-Auth-Token that the real Keystone validates (GET /v3/auth/tokens, no
cache, so a revoked token fails at once) and is scoped to the token's project. Volumes are files under
the state directory; snapshots and volumes made from them are copies; upload-to-image and Nova's
createImage create the image in the real Glance with the caller's token (so the caller's project owns
it) and upload the real bytes with the fakes' service token (as the services may, so a caller token
revoked mid-copy does not break it).
Status changes (creating -> available, ...) happen after `transitionSeconds`, so clients must poll.

Standard library only. Run: python3 fakes.py --config CONFIG.json (see lab/up).
"""

import argparse
import base64
import datetime
import http.client
import json
import math
import os
import re
import shutil
import socket
import subprocess
import ssl
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GIB = 1 << 30
MIN_MICROVERSION = (2, 1)
DEFAULT_MAX_MICROVERSION = "2.96"
CHUNK = 64 * 1024


def qcow2_of(path, size=None):
    """A qcow2 copy of the raw volume file at `path` (beside it), `size` bytes virtual when given (a
    volume's data file holds only its written part), else the file's own size."""
    out = f"{path}.upload-{uuid.uuid4().hex}.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", path, out], check=True)
    if size is not None and size != os.path.getsize(path):
        subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", out, str(size)], check=True)
    return out


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


class ApiError(Exception):
    """An error answer: `kind` is Nova/Cinder's fault key (itemNotFound, badRequest, ...)."""

    def __init__(self, status, message, kind=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
                             406: "notAcceptable", 409: "conflictingRequest"}.get(status, "computeFault")


# --- Keystone and Glance clients ----------------------------------------------------------------------


class Keystone:
    """Validates tokens for the fakes with a service token of the lab's `fakes` user."""

    def __init__(self, cfg, ctx):
        self.url = cfg["keystoneUrl"].rstrip("/")
        self.ctx = ctx
        self.user = cfg["fakesUser"]
        self.password = cfg["fakesPassword"]
        self.admin_password = cfg["adminPassword"]
        self.lock = threading.Lock()
        self.token = None
        self.expires = 0.0

    def _request(self, method, path, body=None, headers=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                raw = resp.read()
                return resp.status, resp.headers, (json.loads(raw) if raw else {})
        except urllib.error.HTTPError as err:
            return err.code, err.headers, {}

    def login(self, user, password, project, domain="Default"):
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": domain}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": domain}}}}}
        status, headers, doc = self._request("POST", "/v3/auth/tokens", body)
        if status != 201:
            raise RuntimeError(f"fakes: Keystone login as {user} failed: HTTP {status}")
        expires = datetime.datetime.fromisoformat(doc["token"]["expires_at"].replace("Z", "+00:00")).timestamp()
        return headers["X-Subject-Token"], expires, doc["token"]

    def service_token(self):
        with self.lock:
            if self.token is None or time.time() > self.expires - 120:
                self.token, self.expires, _ = self.login(self.user, self.password, "service")
            return self.token

    def admin_token(self):
        return self.login("admin", self.admin_password, "admin")[0]

    def validate(self, token):
        """The token's body (user, project, roles, expires_at) or None when Keystone refuses it."""
        status, _, doc = self._request("GET", "/v3/auth/tokens", headers={
            "X-Auth-Token": self.service_token(), "X-Subject-Token": token})
        return doc.get("token") if status == 200 else None

    def revoke_user_tokens(self, user_id):
        """Disabling a user revokes every token it holds; enabling it again lets it log in anew."""
        admin = self.admin_token()
        for enabled in (False, True):
            self._request("PATCH", f"/v3/users/{user_id}", {"user": {"enabled": enabled}},
                          headers={"X-Auth-Token": admin})
        # Revocation events are compared to the second: a token issued in the same second as the
        # event counts as revoked too, so wait that second out before anyone logs in again.
        time.sleep(1.1)


class Glance:
    """Plain-HTTP client of the real Glance on loopback (what the fakes do on a caller's behalf)."""

    def __init__(self, url):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=300)

    def call(self, method, path, token, body=None, content_type="application/json"):
        c = self.conn()
        try:
            data = json.dumps(body).encode() if body is not None else None
            c.request(method, path, body=data, headers={"X-Auth-Token": token, "Content-Type": content_type})
            resp = c.getresponse()
            raw = resp.read()
            if resp.status >= 300:
                raise ApiError(resp.status, f"Glance {method} {path}: HTTP {resp.status}: {raw[:300]!r}")
            return json.loads(raw) if raw else {}
        finally:
            c.close()

    def create_image(self, token, fields):
        return self.call("POST", "/v2/images", token, fields)

    def upload(self, token, image_id, path, size=None):
        """Uploads the file at `path`, followed by zeros up to `size` bytes when given: a volume's
        data file holds only its written part, and Cinder uploads the whole volume."""
        data_size = os.path.getsize(path)
        size = data_size if size is None else size
        if size < data_size:
            raise ValueError(f"{path} holds {data_size} bytes, more than the {size} to upload")
        c = self.conn()
        try:
            c.putrequest("PUT", f"/v2/images/{image_id}/file")
            c.putheader("X-Auth-Token", token)
            c.putheader("Content-Type", "application/octet-stream")
            c.putheader("Content-Length", str(size))
            c.endheaders()
            with open(path, "rb") as f:
                while True:
                    block = f.read(CHUNK * 16)
                    if not block:
                        break
                    c.send(block)
            zeros = bytes(CHUNK * 16)
            left = size - data_size
            while left:
                c.send(zeros[:min(left, len(zeros))])
                left -= min(left, len(zeros))
            resp = c.getresponse()
            raw = resp.read()
            if resp.status != 204:
                raise ApiError(resp.status, f"Glance upload of {image_id}: HTTP {resp.status}: {raw[:300]!r}")
        finally:
            c.close()

    def list_images(self, token):
        images, path = [], "/v2/images?limit=1000"
        while path:
            doc = self.call("GET", path, token)
            images.extend(doc.get("images", []))
            path = doc.get("next")
        return images


# --- state --------------------------------------------------------------------------------------------


class State:
    def __init__(self, cfg, keystone, glance):
        self.cfg = cfg
        self.keystone = keystone
        self.glance = glance
        self.lock = threading.RLock()
        self.data_dir = cfg["dataDir"]
        os.makedirs(os.path.join(self.data_dir, "volumes"), exist_ok=True)
        os.makedirs(os.path.join(self.data_dir, "snapshots"), exist_ok=True)
        self.projects = cfg["projects"]  # name -> id
        self.default_project = cfg["defaultProject"]
        self.servers, self.volumes, self.snapshots, self.flavors = {}, {}, {}, {}
        self.networks, self.subnets, self.ports = {}, {}, {}
        self.faults, self.downloads, self.requests = [], [], []
        self.settings = {"maxMicroversion": DEFAULT_MAX_MICROVERSION, "transitionSeconds": 0.2}

    # Faults: {"op", "mode": "http"|"status"|"cut"|"revokeTokens"|"throttle"|"lostAnswer"|"short", "status", "cutAfterBytes",
    #          "bytesPerSecond", "times", "target"}
    def take_fault(self, op, *targets, modes=None):
        with self.lock:
            for fault in self.faults:
                if fault["op"] != op or fault["times"] <= 0:
                    continue
                if modes and fault["mode"] not in modes:
                    continue
                if fault.get("target") and fault["target"] not in targets:
                    continue
                fault["times"] -= 1
                fault["fired"] = fault.get("fired", 0) + 1
                return dict(fault)
        return None

    def later(self, fn, *args):
        """Runs fn after the transition delay, as the real services' background workers would."""
        def run():
            time.sleep(float(self.settings["transitionSeconds"]))
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a background step must not kill the server
                log("background step failed:", traceback.format_exc())
        threading.Thread(target=run, daemon=True).start()

    def project_id(self, name_or_id):
        if name_or_id in self.projects.values():
            return name_or_id
        if name_or_id in self.projects:
            return self.projects[name_or_id]
        raise ApiError(400, f"unknown project {name_or_id!r} (known: {sorted(self.projects)})")


def parse_version(text):
    major, minor = text.split(".")
    return int(major), int(minor)


# --- serialisation ------------------------------------------------------------------------------------


def server_view(st, s, mv, base):
    view = {
        "id": s["id"], "name": s["name"], "status": s["status"], "tenant_id": s["project_id"],
        "user_id": s["user_id"], "created": s["created"], "updated": s["updated"],
        "hostId": "", "key_name": None, "metadata": dict(s["metadata"]), "accessIPv4": "", "accessIPv6": "",
        "OS-EXT-STS:vm_state": "active" if s["status"] == "ACTIVE" else "stopped",
        "OS-EXT-STS:power_state": 1 if s["status"] == "ACTIVE" else 4,
        "OS-EXT-STS:task_state": s.get("task_state"),
        "OS-EXT-AZ:availability_zone": "nova",
        "image": {"id": s["image_id"], "links": []} if s["image_id"] else "",
        "links": [{"rel": "self", "href": f"{base}/servers/{s['id']}"}],
        "addresses": {},
        "os-extended-volumes:volumes_attached": [],
    }
    flavor = st.flavors[s["flavor_id"]]
    if mv >= (2, 47):
        view["flavor"] = {"vcpus": flavor["vcpus"], "ram": flavor["ram"], "disk": flavor["disk"],
                          "ephemeral": flavor["ephemeral"], "swap": flavor["swap"],
                          "original_name": flavor["name"], "extra_specs": dict(flavor["extra_specs"])}
    else:
        view["flavor"] = {"id": flavor["id"], "links": [{"rel": "bookmark", "href": f"{base}/flavors/{flavor['id']}"}]}
    if mv >= (2, 19):
        view["description"] = s["description"]
    for port_id in s["ports"]:
        port = st.ports[port_id]
        net = st.networks[port["network_id"]]
        for ip in port["fixed_ips"]:
            view["addresses"].setdefault(net["name"], []).append({
                "addr": ip["ip_address"], "version": 6 if ":" in ip["ip_address"] else 4,
                "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]})
    for att in s["attachments"]:
        entry = {"id": att["volume_id"]}
        if mv >= (2, 3):
            entry["delete_on_termination"] = False
        view["os-extended-volumes:volumes_attached"].append(entry)
    return view


def flavor_view(f, mv, base):
    swap = f["swap"] if (f["swap"] or mv >= (2, 75)) else ""
    view = {"id": f["id"], "name": f["name"], "vcpus": f["vcpus"], "ram": f["ram"], "disk": f["disk"],
            "OS-FLV-EXT-DATA:ephemeral": f["ephemeral"], "swap": swap, "os-flavor-access:is_public": True,
            "rxtx_factor": 1.0, "links": [{"rel": "self", "href": f"{base}/flavors/{f['id']}"}]}
    if mv >= (2, 55):
        view["description"] = None
    if mv >= (2, 61):
        view["extra_specs"] = dict(f["extra_specs"])
    return view


def volume_view(v):
    view = {k: v[k] for k in ("id", "name", "size", "status", "created_at", "updated_at", "description",
                              "snapshot_id", "user_id", "metadata")}
    view.update({"bootable": "true" if v["bootable"] else "false", "volume_type": "lab-file",
                 "availability_zone": "nova", "source_volid": None, "encrypted": False, "multiattach": False,
                 "replication_status": None, "consistencygroup_id": None,
                 "attachments": [dict(a) for a in v["attachments"]]})
    if v["image_metadata"]:
        view["volume_image_metadata"] = dict(v["image_metadata"])
    return view


def snapshot_view(s):
    view = {k: s[k] for k in ("id", "name", "volume_id", "size", "status", "created_at", "updated_at",
                              "description", "metadata")}
    view["progress"] = "100%" if s["status"] == "available" else "0%"
    return view


# --- HTTP ---------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vm-import-lab-openstack/1"
    st: State = None  # set by main

    def log_message(self, fmt, *args):
        log(self.address_string(), fmt % args)

    # plumbing
    def read_body(self):
        """Reads the request body once, before anything can fail: a body left unread on a kept-alive
        connection would be parsed as the next request line."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "send request bodies with Content-Length")
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""

    def body_json(self):
        raw = self.body
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as err:
            raise ApiError(400, f"malformed JSON body: {err}")

    def send_json(self, status, doc, headers=None):
        raw = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if doc is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if raw and self.command != "HEAD":
            self.wfile.write(raw)

    def send_error_doc(self, err, service):
        if service == "network":
            doc = {"NeutronError": {"type": {404: "NotFound", 400: "BadRequest", 409: "Conflict"}.get(err.status, "Error"),
                                    "message": err.message, "detail": ""}}
        elif err.status == 401:
            doc = {"error": {"code": 401, "title": "Unauthorized", "message": err.message}}
        else:
            doc = {err.kind: {"code": err.status, "message": err.message}}
        self.send_json(err.status, doc)

    def do_GET(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_PATCH(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        query = urllib.parse.parse_qs(url.query)
        service = parts[0] if parts else ""
        try:
            self.read_body()
            if service == "image":
                return self.proxy_glance("/" + "/".join(parts[1:]), url.query)
            if service == "lab":
                self.check_basic_auth()
                return self.control(parts[1:], query)
            if service not in ("compute", "volume", "network"):
                raise ApiError(404, f"no service at {url.path}")
            token = self.authenticate()
            with self.st.lock:
                self.st.requests.append({"service": service, "method": self.command, "path": url.path})
            if service == "compute":
                return self.nova(parts[1:], query, token)
            if service == "volume":
                return self.cinder(parts[1:], query, token)
            return self.neutron(parts[1:], query, token)
        except ApiError as err:
            self.send_error_doc(err, service)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except Exception as err:  # noqa: BLE001 - answer 500 and keep serving
            log("internal error:", traceback.format_exc())
            self.send_error_doc(ApiError(500, f"fake internal error: {err}"), service)

    def authenticate(self):
        token = self.headers.get("X-Auth-Token")
        if not token:
            raise ApiError(401, "The request you have made requires authentication.")
        info = self.st.keystone.validate(token)
        if info is None or "project" not in info:
            raise ApiError(401, "The request you have made requires authentication.")
        info["raw"] = token
        return info

    def check_basic_auth(self):
        expected = "Basic " + base64.b64encode(f"admin:{self.st.cfg['adminPassword']}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            raise ApiError(401, "control API: basic auth with the lab's OpenStack admin user required")

    # --- Nova --------------------------------------------------------------------------------------

    def microversion(self):
        header = self.headers.get("OpenStack-API-Version", "")
        value = None
        for item in header.split(","):
            words = item.split()
            if len(words) == 2 and words[0].lower() == "compute":
                value = words[1]
        value = value or self.headers.get("X-OpenStack-Nova-API-Version")
        maximum = parse_version(self.st.settings["maxMicroversion"])
        if not value:
            return MIN_MICROVERSION
        if value == "latest":
            return maximum
        try:
            wanted = parse_version(value)
        except ValueError:
            raise ApiError(400, f"Invalid format for API version {value!r}")
        if wanted < MIN_MICROVERSION or wanted > maximum:
            raise ApiError(406, f"Version {value} is not supported by the API. Minimum is 2.1 and maximum is "
                                f"{self.st.settings['maxMicroversion']}.")
        return wanted

    def nova(self, parts, query, token):
        st = self.st
        if not parts or parts[0] != "v2.1":
            raise ApiError(404, "only /compute/v2.1 is served")
        parts = parts[1:]
        base = f"https://{self.headers.get('Host')}/compute/v2.1"
        if not parts:
            return self.send_json(200, {"version": {"id": "v2.1", "status": "CURRENT", "min_version": "2.1",
                                                    "version": st.settings["maxMicroversion"],
                                                    "updated": "2013-07-23T11:33:21Z",
                                                    "links": [{"rel": "self", "href": base + "/"}]}})
        mv = self.microversion()
        mv_text = f"{mv[0]}.{mv[1]}"
        headers = {"OpenStack-API-Version": f"compute {mv_text}", "X-OpenStack-Nova-API-Version": mv_text,
                   "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"}
        project = token["project"]["id"]
        method = self.command

        def own_server(server_id):
            s = st.servers.get(server_id)
            if s is None or s["project_id"] != project:
                raise ApiError(404, f"Instance {server_id} could not be found.")
            return s

        with st.lock:
            if parts[0] == "servers" and len(parts) in (1, 2) and method == "GET" and (len(parts) == 1 or parts[1] == "detail"):
                detail = len(parts) == 2
                found = [s for s in st.servers.values() if s["project_id"] == project]
                if "name" in query:
                    pattern = re.compile(query["name"][0])
                    found = [s for s in found if pattern.search(s["name"])]
                if "status" in query:
                    found = [s for s in found if s["status"] == query["status"][0].upper()]
                found.sort(key=lambda s: s["created"], reverse=True)
                if "limit" in query:
                    found = found[: int(query["limit"][0])]
                if detail:
                    items = [server_view(st, s, mv, base) for s in found]
                else:
                    items = [{"id": s["id"], "name": s["name"],
                              "links": [{"rel": "self", "href": f"{base}/servers/{s['id']}"}]} for s in found]
                return self.send_json(200, {"servers": items}, headers)
            if parts[0] == "servers" and len(parts) == 2 and method == "GET":
                return self.send_json(200, {"server": server_view(st, own_server(parts[1]), mv, base)}, headers)
            if parts[0] == "servers" and len(parts) == 3 and parts[2] == "os-volume_attachments" and method == "GET":
                s = own_server(parts[1])
                items = []
                for att in s["attachments"]:
                    item = {"volumeId": att["volume_id"], "serverId": s["id"], "device": att["device"]}
                    if mv < (2, 89):
                        item["id"] = att["volume_id"]
                    else:
                        item["attachment_id"] = att["attachment_id"]
                    if mv >= (2, 70):
                        item["tag"] = None
                    if mv >= (2, 79):
                        item["delete_on_termination"] = False
                    items.append(item)
                return self.send_json(200, {"volumeAttachments": items}, headers)
            if parts[0] == "servers" and len(parts) == 3 and parts[2] == "action" and method == "POST":
                s = own_server(parts[1])
                body = self.body_json()
                if "os-stop" in body:
                    return self.nova_stop(s, headers)
                if "createImage" in body:
                    return self.nova_create_image(s, body["createImage"] or {}, token, mv, headers)
                raise ApiError(400, f"unsupported server action {sorted(body)}")
            if parts[0] == "flavors" and len(parts) == 2 and method == "GET":
                f = st.flavors.get(parts[1])
                if f is None:
                    raise ApiError(404, f"Flavor {parts[1]} could not be found.")
                return self.send_json(200, {"flavor": flavor_view(f, mv, base)}, headers)
        raise ApiError(404, f"the compute fake does not serve {method} /{'/'.join(parts)}")

    def nova_stop(self, s, headers):
        st = self.st
        fault = st.take_fault("server.stop", s["id"], s["name"])
        if fault and fault["mode"] == "http":
            raise ApiError(fault.get("status", 500), "injected fault: os-stop failed")
        if s["status"] != "ACTIVE":
            raise ApiError(409, f"Cannot 'stop' instance {s['id']} while it is in vm_state stopped")
        s["task_state"] = "powering-off"

        def stopped():
            with st.lock:
                s["task_state"] = None
                if not (fault and fault["mode"] == "status"):
                    s["status"] = "SHUTOFF"
                    s["updated"] = now_iso()
        stop_after = s.get("stop_seconds")
        if stop_after is not None:
            threading.Timer(float(stop_after), stopped).start()
        else:
            st.later(stopped)
        return self.send_json(202, None, headers)

    def nova_create_image(self, s, req, token, mv, headers):
        st = self.st
        fault = st.take_fault("server.createImage", s["id"], s["name"])
        if fault and fault["mode"] == "http":
            raise ApiError(fault.get("status", 500), "injected fault: createImage failed")
        if not req.get("name"):
            raise ApiError(400, "Invalid input for field/attribute name.")
        if not s["root_disk"]:
            # Real Nova makes a zero-byte image whose block_device_mapping names Cinder snapshots; a
            # client must use Cinder for volume-backed servers instead, so the fake does not pretend.
            raise ApiError(409, "the lab's compute fake snapshots only image-backed servers")
        fields = {"name": req["name"], "disk_format": s["root_disk"]["format"], "container_format": "bare",
                  "image_type": "snapshot", "instance_uuid": s["id"], "owner_project_name": token["project"]["name"],
                  "base_image_ref": s["image_id"] or ""}
        fields.update({k: str(v) for k, v in s["base_image_properties"].items()})
        fields.update({k: str(v) for k, v in (req.get("metadata") or {}).items()})
        image = st.glance.create_image(token["raw"], fields)
        s["task_state"] = "image_uploading"

        def upload():
            try:
                if not (fault and fault["mode"] == "status"):
                    st.glance.upload(st.keystone.service_token(), image["id"], s["root_disk"]["path"])
            finally:
                with st.lock:
                    s["task_state"] = None
        st.later(upload)
        headers = dict(headers, Location=f"https://{self.headers.get('Host')}/image/v2/images/{image['id']}")
        if mv >= (2, 45):
            return self.send_json(202, {"image_id": image["id"]}, headers)
        return self.send_json(202, None, headers)

    # --- Cinder ------------------------------------------------------------------------------------

    def cinder(self, parts, query, token):
        st = self.st
        if len(parts) < 2 or parts[0] != "v3":
            raise ApiError(404, "only /volume/v3/{project_id} is served")
        if parts[1] != token["project"]["id"]:
            raise ApiError(403, f"token is scoped to project {token['project']['id']}, not {parts[1]}", "forbidden")
        project = parts[1]
        parts = parts[2:]
        method = self.command
        headers = {"OpenStack-API-Version": "volume 3.0"}

        def own(kind, table, object_id):
            obj = table.get(object_id)
            if obj is None or obj["project_id"] != project:
                raise ApiError(404, f"{kind} {object_id} could not be found.")
            return obj

        def listing(table, view):
            found = [o for o in table.values() if o["project_id"] == project]
            if "name" in query:
                found = [o for o in found if o["name"] == query["name"][0]]
            return [view(o) for o in sorted(found, key=lambda o: o["created_at"])]

        with st.lock:
            if parts[:1] == ["volumes"] and method == "GET" and len(parts) == 2 and parts[1] == "detail":
                return self.send_json(200, {"volumes": listing(st.volumes, volume_view)}, headers)
            if parts[:1] == ["volumes"] and method == "GET" and len(parts) == 2:
                return self.send_json(200, {"volume": volume_view(own("Volume", st.volumes, parts[1]))}, headers)
            if parts == ["volumes"] and method == "POST":
                return self.cinder_create_volume(project, token, self.body_json().get("volume") or {}, headers)
            if parts[:1] == ["volumes"] and method == "DELETE" and len(parts) == 2:
                return self.cinder_delete_volume(own("Volume", st.volumes, parts[1]), headers)
            if parts[:1] == ["volumes"] and len(parts) == 3 and parts[2] == "action" and method == "POST":
                v = own("Volume", st.volumes, parts[1])
                body = self.body_json()
                if "os-volume_upload_image" in body:
                    return self.cinder_upload(v, body["os-volume_upload_image"] or {}, token, headers)
                raise ApiError(400, f"unsupported volume action {sorted(body)}")
            if parts[:1] == ["snapshots"] and method == "GET" and len(parts) == 2 and parts[1] == "detail":
                return self.send_json(200, {"snapshots": listing(st.snapshots, snapshot_view)}, headers)
            if parts[:1] == ["snapshots"] and method == "GET" and len(parts) == 2:
                return self.send_json(200, {"snapshot": snapshot_view(own("Snapshot", st.snapshots, parts[1]))}, headers)
            if parts == ["snapshots"] and method == "POST":
                return self.cinder_create_snapshot(project, token, self.body_json().get("snapshot") or {}, headers)
            if parts[:1] == ["snapshots"] and method == "DELETE" and len(parts) == 2:
                return self.cinder_delete_snapshot(own("Snapshot", st.snapshots, parts[1]), headers)
        raise ApiError(404, f"the block-storage fake does not serve {method} /{'/'.join(parts)}")

    def cinder_create_snapshot(self, project, token, req, headers):
        st = self.st
        v = st.volumes.get(req.get("volume_id") or "")
        if v is None or v["project_id"] != project:
            raise ApiError(404, f"Volume {req.get('volume_id')} could not be found.")
        fault = st.take_fault("snapshot.create", v["id"], v["name"])
        if fault and fault["mode"] == "http":
            raise ApiError(fault.get("status", 500), "injected fault: snapshot create failed")
        if v["status"] not in ("available", "in-use"):
            raise ApiError(400, f"Invalid volume: Volume {v['id']} status must be available or in-use, but "
                                f"current status is: {v['status']}.")
        if v["status"] == "in-use" and str(req.get("force", False)).lower() != "true":
            raise ApiError(400, f"Invalid volume: Volume {v['id']} status must be available, but current "
                                "status is: in-use. (force the snapshot of an attached volume)")
        snap_id = str(uuid.uuid4())
        path = os.path.join(st.data_dir, "snapshots", snap_id + ".img")
        snap = {"id": snap_id, "name": req.get("name"), "description": req.get("description"),
                "volume_id": v["id"], "size": v["size"], "status": "creating", "project_id": project,
                "created_at": now_iso(), "updated_at": None, "metadata": dict(req.get("metadata") or {}),
                "path": path}
        st.snapshots[snap_id] = snap
        src = v["path"]

        def done():
            shutil.copyfile(src, path)
            with st.lock:
                snap["status"] = "error" if (fault and fault["mode"] == "status") else "available"
                snap["updated_at"] = now_iso()
        st.later(done)
        self.after_fault(fault, token)
        return self.send_json(202, {"snapshot": snapshot_view(snap)}, headers)

    def cinder_create_volume(self, project, token, req, headers):
        st = self.st
        snap_id = req.get("snapshot_id")
        if not snap_id:
            raise ApiError(400, "the lab's block-storage fake creates volumes from snapshots only (control API for others)")
        snap = st.snapshots.get(snap_id)
        if snap is None or snap["project_id"] != project:
            raise ApiError(404, f"Snapshot {snap_id} could not be found.")
        fault = st.take_fault("volume.create", snap_id, req.get("name") or "")
        if fault and fault["mode"] == "http":
            raise ApiError(fault.get("status", 500), "injected fault: volume create failed")
        if snap["status"] != "available":
            raise ApiError(400, f"Invalid snapshot: Originating snapshot status must be one of 'available' values")
        lost = bool(fault and fault["mode"] == "lostAnswer")
        size = int(req.get("size") or snap["size"])
        if size < snap["size"]:
            raise ApiError(400, f"Invalid input received: Volume size '{size}'GB cannot be smaller than the "
                                f"snapshot size {snap['size']}GB. They must be >= original snapshot size.")
        parent = st.volumes[snap["volume_id"]]
        v = new_volume(st, project, token["user"]["id"], req.get("name"), snap["path"], parent["bootable"],
                       parent["image_metadata"], status="creating", copy_later=True, snapshot_id=snap_id, size=size)
        failed = bool(fault and fault["mode"] == "status")

        def done():
            shutil.copyfile(snap["path"], v["path"])
            with st.lock:
                v["status"] = "error" if failed else "available"
                v["updated_at"] = now_iso()
        st.later(done)
        self.after_fault(fault, token)
        if lost:
            # The volume exists, but the caller never learns its id: as when the answer is lost on
            # the way, or the caller dies before recording it.
            raise ApiError(502, "injected fault: the answer to volume create was lost")
        return self.send_json(202, {"volume": volume_view(v)}, headers)

    def cinder_delete_volume(self, v, headers):
        st = self.st
        fault = st.take_fault("volume.delete", v["id"], v["name"] or "")
        if fault and fault["mode"] == "http":
            raise ApiError(fault.get("status", 500), "injected fault: volume delete failed")
        if v["status"] not in ("available", "error", "error_restoring", "error_extending", "error_managing"):
            raise ApiError(400, f"Invalid volume: Volume status must be available or error or error_restoring or "
                                f"error_extending or error_managing and must not be migrating, attached, belong to "
                                f"a group, have snapshots, awaiting a transfer, or be disassociated from "
                                f"snapshots after volume transfer. (current status: {v['status']})")
        dependents = [s for s in st.snapshots.values() if s["volume_id"] == v["id"]]
        if dependents:
            raise ApiError(400, f"Invalid volume: Volume {v['id']} still has {len(dependents)} dependent snapshots.")
        v["status"] = "deleting"

        def gone():
            with st.lock:
                st.volumes.pop(v["id"], None)
            try:
                os.remove(v["path"])
            except FileNotFoundError:
                pass
        st.later(gone)
        return self.send_json(202, None, headers)

    def cinder_delete_snapshot(self, snap, headers):
        st = self.st
        fault = st.take_fault("snapshot.delete", snap["id"], snap["name"] or "")
        if fault and fault["mode"] == "http":
            raise ApiError(fault.get("status", 500), "injected fault: snapshot delete failed")
        if snap["status"] not in ("available", "error", "error_deleting"):
            raise ApiError(400, f"Invalid snapshot: Snapshot status must be available or error (current: {snap['status']})")
        # As on a backend with linked clones: a snapshot outlives no volume made from it.
        clones = [v for v in st.volumes.values() if v["snapshot_id"] == snap["id"]]
        if clones:
            raise ApiError(400, f"Invalid snapshot: snapshot {snap['id']} has {len(clones)} dependent volumes "
                                f"({', '.join(c['id'] for c in clones)}); delete them first")
        snap["status"] = "deleting"

        def gone():
            with st.lock:
                st.snapshots.pop(snap["id"], None)
            try:
                os.remove(snap["path"])
            except FileNotFoundError:
                pass
        st.later(gone)
        return self.send_json(202, None, headers)

    def cinder_upload(self, v, req, token, headers):
        st = self.st
        fault = st.take_fault("volume.upload", v["id"], v["name"] or "")
        if fault and fault["mode"] == "http":
            raise ApiError(fault.get("status", 500), "injected fault: upload to image failed")
        force = str(req.get("force", False)).lower() == "true"
        if v["status"] == "in-use" and force:
            raise ApiError(400, "Invalid volume: Uploading an attached volume with force is disabled "
                                "(enable_force_upload = False): clone the volume first.")
        if v["status"] != "available":
            raise ApiError(400, f"Invalid volume: Volume {v['id']} status must be available or in-use, but "
                                f"current status is: {v['status']}.")
        disk_format = req.get("disk_format", "raw")
        if disk_format not in ("raw", "qcow2"):
            raise ApiError(400, f"the lab's block-storage fake uploads raw or qcow2 images, not {disk_format}")
        fields = {"name": req.get("image_name") or f"volume-{v['id']}", "disk_format": disk_format,
                  "container_format": req.get("container_format", "bare")}
        fields.update({k: str(val) for k, val in v["image_metadata"].items()
                       if k not in ("image_id", "image_name", "checksum", "size", "disk_format", "container_format",
                                    "min_disk", "min_ram")})
        image = st.glance.create_image(token["raw"], fields)
        v["status"] = "uploading"
        failed = bool(fault and fault["mode"] == "status")
        # mode 'short': the image goes active holding only the volume's data file, as when a
        # backend loses the end of a volume on the way; Glance's size and hash then match the cut data.
        size = None if (fault and fault["mode"] == "short") else v["size"] * GIB

        def upload():
            try:
                if failed:
                    pass
                elif disk_format == "qcow2":
                    # As Cinder does: qemu-img converts the volume on the Cinder host, and the image
                    # holds only its allocated clusters.
                    converted = qcow2_of(v["path"], size)
                    try:
                        st.glance.upload(st.keystone.service_token(), image["id"], converted)
                    finally:
                        os.remove(converted)
                else:
                    st.glance.upload(st.keystone.service_token(), image["id"], v["path"], size)
            finally:
                with st.lock:
                    v["status"] = "available"
                    v["updated_at"] = now_iso()
        st.later(upload)
        self.after_fault(fault, token)
        return self.send_json(202, {"os-volume_upload_image": {
            "id": v["id"], "updated_at": v["updated_at"], "status": "uploading", "display_description": v["description"],
            "size": v["size"], "volume_type": {"name": "lab-file"}, "image_id": image["id"],
            "container_format": fields["container_format"], "disk_format": disk_format, "image_name": fields["name"],
            "visibility": "private", "protected": False}}, headers)

    def after_fault(self, fault, token):
        """mode 'revokeTokens': the step succeeds, but every token of the caller is revoked before
        the answer goes out (as a token expiring mid-import would be), so the client's next call gets
        a 401. Done before answering, second boundary included, so a fresh login is not revoked too."""
        if fault and fault["mode"] == "revokeTokens":
            self.st.keystone.revoke_user_tokens(token["user"]["id"])

    # --- Neutron -----------------------------------------------------------------------------------

    def neutron(self, parts, query, token):
        st = self.st
        if not parts or parts[0] != "v2.0":
            raise ApiError(404, "only /network/v2.0 is served")
        parts = parts[1:]
        project = token["project"]["id"]
        if self.command != "GET" or not parts:
            raise ApiError(404, "the network fake serves GET of networks and ports only")

        def matches(obj):
            for key, values in query.items():
                if key in ("fields", "limit", "marker"):
                    continue
                if key in obj and str(obj[key]) not in values:
                    return False
            return True

        with st.lock:
            tables = {"networks": (st.networks, "network"), "ports": (st.ports, "port"), "subnets": (st.subnets, "subnet")}
            kind = parts[0].removesuffix(".json")
            if kind not in tables:
                raise ApiError(404, f"the network fake does not serve {parts[0]}")
            table, singular = tables[kind]
            visible = {k: v for k, v in table.items() if v["project_id"] == project or v.get("shared")}
            if len(parts) == 1:
                items = [public(o) for o in visible.values() if matches(o)]
                return self.send_json(200, {kind: items})
            obj = visible.get(parts[1])
            if obj is None:
                raise ApiError(404, f"{singular.capitalize()} {parts[1]} could not be found.")
            return self.send_json(200, {singular: public(obj)})

    # --- Glance proxy ------------------------------------------------------------------------------

    def proxy_glance(self, path, query):
        st = self.st
        target = path + ("?" + query if query else "")
        m = re.fullmatch(r"/v2/images/([^/]+)(/file)?", path)
        image_id = m.group(1) if m else ""
        op = {("GET", True): "image.download", ("GET", False): "image.get",
              ("DELETE", False): "image.delete"}.get((self.command, bool(m and m.group(2))), "") if m else ""
        fault = st.take_fault(op, image_id, self.image_name(image_id)) if op else None
        if fault and fault["mode"] == "http":
            raise ApiError(fault.get("status", 500), f"injected fault: {op} failed")
        body = self.body or None
        forward = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "keep-alive", "transfer-encoding", "content-length")}
        conn = st.glance.conn()
        record = {"method": self.command, "path": path, "imageId": image_id, "range": self.headers.get("Range"),
                  "status": None, "bytes": 0, "cut": False, "time": now_iso()}
        try:
            conn.request(self.command, target, body=body, headers=forward)
            resp = conn.getresponse()
            record["status"] = resp.status
            self.send_response(resp.status)
            resp_length = resp.getheader("Content-Length")
            for k, v in resp.getheaders():
                if k.lower() in ("connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"):
                    continue
                self.send_header(k, v)
            chunked = resp_length is None and self.command != "HEAD" and resp.status not in (204, 304)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif resp_length is not None:
                self.send_header("Content-Length", resp_length)
            self.end_headers()
            cut_after = fault["cutAfterBytes"] if fault and fault["mode"] == "cut" else None
            rate = fault["bytesPerSecond"] if fault and fault["mode"] == "throttle" else None
            started = time.monotonic()
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                if rate:
                    # Paced: this body never runs ahead of bytesPerSecond.
                    ahead = (record["bytes"] + len(block)) / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                if cut_after is not None and record["bytes"] + len(block) >= cut_after:
                    block = block[: cut_after - record["bytes"]]
                    self.write_body(block, chunked)
                    record["bytes"] += len(block)
                    record["cut"] = True
                    # Drop the connection mid-body, without TLS close_notify, as a broken network does.
                    self.close_connection = True
                    try:
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.write_body(block, chunked)
                record["bytes"] += len(block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            conn.close()
            if op:
                with st.lock:
                    st.downloads.append(record)

    def image_name(self, image_id):
        """The image's name, looked up only when a fault targets an image by name (tests know the
        names of the temporary images they cause, not their ids)."""
        with self.st.lock:
            targets = [f["target"] for f in self.st.faults
                       if f["op"].startswith("image.") and f["times"] > 0 and f.get("target")]
        if not image_id or not targets or image_id in targets:
            return image_id
        try:
            return self.st.glance.call("GET", f"/v2/images/{image_id}", self.st.keystone.service_token()).get("name") or ""
        except ApiError:
            return ""

    def write_body(self, block, chunked):
        if not block:
            return
        if chunked:
            self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        else:
            self.wfile.write(block)

    # --- control API -------------------------------------------------------------------------------

    def control(self, parts, query):
        st = self.st
        method = self.command
        if parts == ["health"]:
            return self.send_json(200, {"ok": True})
        if parts == ["servers"] and method == "POST":
            return self.send_json(201, create_server(st, self.body_json()))
        if parts == ["servers"] and method == "GET":
            with st.lock:
                return self.send_json(200, [lab_server(st, s) for s in st.servers.values()])
        if parts[:1] == ["servers"] and len(parts) == 2:
            with st.lock:
                s = find_server(st, parts[1])
                if method == "GET":
                    return self.send_json(200, lab_server(st, s))
                if method == "PATCH":
                    body = self.body_json()
                    if "status" in body:
                        s["status"] = body["status"]
                    if "stopSeconds" in body:
                        s["stop_seconds"] = body["stopSeconds"]
                    return self.send_json(200, lab_server(st, s))
                if method == "DELETE":
                    delete_server(st, s)
                    return self.send_json(204, None)
        if parts == ["objects"] and method == "GET":
            return self.send_json(200, objects(st, query))
        if parts == ["faults"]:
            if method == "POST":
                fault = self.body_json()
                unknown = set(fault) - {"op", "mode", "status", "cutAfterBytes", "bytesPerSecond", "times", "target"}
                if unknown or not fault.get("op"):
                    raise ApiError(400, f"fault needs 'op'; unknown fields {sorted(unknown)}")
                fault.setdefault("mode", "http")
                fault.setdefault("times", 1)
                fault.setdefault("target", "")
                if fault["mode"] not in ("http", "status", "cut", "revokeTokens", "throttle", "lostAnswer", "short"):
                    raise ApiError(400, f"unknown fault mode {fault['mode']!r}")
                if fault["mode"] == "cut" and not isinstance(fault.get("cutAfterBytes"), int):
                    raise ApiError(400, "mode 'cut' needs an integer cutAfterBytes")
                if fault["mode"] == "throttle" and not (isinstance(fault.get("bytesPerSecond"), int)
                                                         and fault["bytesPerSecond"] > 0):
                    raise ApiError(400, "mode 'throttle' needs a positive integer bytesPerSecond")
                with st.lock:
                    st.faults.append(fault)
                return self.send_json(201, fault)
            if method == "GET":
                with st.lock:
                    return self.send_json(200, st.faults)
            if method == "DELETE":
                with st.lock:
                    st.faults.clear()
                return self.send_json(204, None)
        if parts == ["downloads"]:
            with st.lock:
                if method == "GET":
                    return self.send_json(200, st.downloads)
                if method == "DELETE":
                    st.downloads.clear()
                    return self.send_json(204, None)
        if parts == ["requests"] and method == "GET":
            with st.lock:
                return self.send_json(200, st.requests)
        if parts == ["settings"]:
            with st.lock:
                if method == "PATCH":
                    body = self.body_json()
                    unknown = set(body) - set(st.settings)
                    if unknown:
                        raise ApiError(400, f"unknown settings {sorted(unknown)}")
                    if "maxMicroversion" in body:
                        parse_version(body["maxMicroversion"])
                    st.settings.update(body)
                return self.send_json(200, st.settings)
        raise ApiError(404, f"no control endpoint {method} /lab/{'/'.join(parts)}")


def public(obj):
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def new_volume(st, project, user_id, name, src, bootable, image_metadata, status="available", copy_later=False,
               snapshot_id=None, size=None):
    vol_id = str(uuid.uuid4())
    path = os.path.join(st.data_dir, "volumes", vol_id + ".img")
    if not copy_later:
        shutil.copyfile(src, path)
    # Cinder sizes are whole GiB. A volume's data file holds only its first bytes (a few MiB); the
    # rest of the volume reads as zeros, and an upload to an image sends the volume whole.
    size = size or max(1, math.ceil(os.path.getsize(src) / GIB))
    v = {"id": vol_id, "name": name, "description": None, "size": size, "status": status, "project_id": project,
         "user_id": user_id, "bootable": bool(bootable), "image_metadata": dict(image_metadata or {}),
         "attachments": [], "snapshot_id": snapshot_id, "created_at": now_iso(), "updated_at": None,
         "metadata": {}, "path": path}
    st.volumes[vol_id] = v
    return v


def find_server(st, key):
    for s in st.servers.values():
        if s["id"] == key or s["name"] == key:
            return s
    raise ApiError(404, f"no server {key!r}")


def network_for(st, project, name, cidrs):
    for net in st.networks.values():
        if net["name"] == name and net["project_id"] == project:
            return net
    net_id = str(uuid.uuid4())
    net = {"id": net_id, "name": name, "status": "ACTIVE", "admin_state_up": True, "shared": False,
           "project_id": project, "tenant_id": project, "subnets": [], "mtu": 1450, "router:external": False}
    for version in (4, 6):
        subnet_id = str(uuid.uuid4())
        st.subnets[subnet_id] = {"id": subnet_id, "name": f"{name}-v{version}", "network_id": net_id,
                                 "ip_version": version, "cidr": cidrs[version], "project_id": project,
                                 "tenant_id": project}
        net["subnets"].append(subnet_id)
    st.networks[net_id] = net
    return net


def create_server(st, spec):
    known = {"name", "project", "status", "flavor", "description", "volumes", "rootDisk", "image", "networks",
             "stopSeconds", "metadata"}
    unknown = set(spec) - known
    if unknown:
        raise ApiError(400, f"unknown server spec fields {sorted(unknown)}")
    if not spec.get("name"):
        raise ApiError(400, "name is required")
    with st.lock:
        project = st.project_id(spec.get("project") or st.default_project)
    flavor_spec = spec.get("flavor") or {}
    flavor = {"id": str(uuid.uuid4()), "name": flavor_spec.get("name", "lab.small"),
              "vcpus": int(flavor_spec.get("vcpus", 1)), "ram": int(flavor_spec.get("ram", 512)),
              "disk": int(flavor_spec.get("disk", 1)), "ephemeral": int(flavor_spec.get("ephemeral", 0)),
              "swap": int(flavor_spec.get("swap", 0)), "extra_specs": dict(flavor_spec.get("extraSpecs") or {})}
    root = spec.get("rootDisk")
    if root:
        if not os.path.isabs(root.get("path", "")) or not os.path.isfile(root["path"]):
            raise ApiError(400, f"rootDisk.path must be an existing absolute path, got {root.get('path')!r}")
        if root.get("format", "qcow2") not in ("qcow2", "raw"):
            raise ApiError(400, "rootDisk.format must be qcow2 or raw")
        root = {"path": root["path"], "format": root.get("format", "qcow2")}
    if not root and not spec.get("volumes"):
        raise ApiError(400, "a server needs a rootDisk (image-backed) or volumes (volume-backed)")
    # The base image lives in the real Glance (public, metadata only), as a cloud's images do.
    image_spec = spec.get("image")
    base_image = None
    properties = {}
    if image_spec is not None:
        properties = {k: str(v) for k, v in (image_spec.get("properties") or {}).items()}
        fields = {"name": image_spec.get("name") or f"{spec['name']}-base", "disk_format": root["format"] if root else "raw",
                  "container_format": "bare", "visibility": "public"}
        fields.update(properties)
        base_image = st.glance.create_image(st.keystone.service_token(), fields)
    elif root:
        raise ApiError(400, "an image-backed server needs 'image' (its base image in Glance)")
    server_id = str(uuid.uuid4())
    with st.lock:
        st.flavors[flavor["id"]] = flavor
        s = {"id": server_id, "name": spec["name"], "project_id": project, "user_id": "lab",
             "status": spec.get("status", "ACTIVE"), "flavor_id": flavor["id"],
             "image_id": base_image["id"] if (base_image and root) else "", "description": spec.get("description"),
             "created": now_iso(), "updated": now_iso(), "metadata": dict(spec.get("metadata") or {}),
             "attachments": [], "ports": [], "root_disk": root, "base_image_properties": properties if root else {},
             "stop_seconds": spec.get("stopSeconds"), "task_state": None}
        if s["status"] not in ("ACTIVE", "SHUTOFF"):
            raise ApiError(400, "status must be ACTIVE or SHUTOFF")
        letters = "abcdefghijklmnopqrstuvwxyz"
        for index, vol_spec in enumerate(spec.get("volumes") or []):
            path = vol_spec.get("path", "")
            if not os.path.isabs(path) or not os.path.isfile(path):
                raise ApiError(400, f"volumes[{index}].path must be an existing absolute path, got {path!r}")
            bootable = bool(vol_spec.get("bootable", index == 0 and not root))
            metadata = dict(vol_spec.get("imageMetadata") or {})
            if bootable and base_image and not root:
                metadata = {"image_id": base_image["id"], "image_name": base_image["name"], **properties, **metadata}
            v = new_volume(st, project, "lab", vol_spec.get("name") or f"{spec['name']}-vol{index}", path,
                           bootable, metadata, status="in-use")
            device = vol_spec.get("device") or f"/dev/vd{letters[index + (1 if root else 0)]}"
            attachment_id = str(uuid.uuid4())
            v["attachments"].append({"id": attachment_id, "attachment_id": attachment_id, "volume_id": v["id"],
                                     "server_id": server_id, "device": device, "host_name": None,
                                     "attached_at": now_iso()})
            s["attachments"].append({"volume_id": v["id"], "device": device, "attachment_id": attachment_id})
        for index, nic in enumerate(spec.get("networks") or []):
            net = network_for(st, project, nic.get("name", "lab-net"),
                              {4: nic.get("cidr4", "10.0.0.0/24"), 6: nic.get("cidr6", "fd00::/64")})
            port_id = str(uuid.uuid4())
            mac = nic.get("mac") or "fa:16:3e:%02x:%02x:%02x" % tuple(os.urandom(3))
            fixed = []
            for ip in nic.get("ips") or ["10.0.0.%d" % (10 + index)]:
                version = 6 if ":" in ip else 4
                subnet = next(st.subnets[i] for i in net["subnets"] if st.subnets[i]["ip_version"] == version)
                fixed.append({"subnet_id": subnet["id"], "ip_address": ip})
            st.ports[port_id] = {"id": port_id, "name": "", "network_id": net["id"], "mac_address": mac,
                                 "fixed_ips": fixed, "device_id": server_id, "device_owner": "compute:nova",
                                 "status": "ACTIVE", "admin_state_up": True, "project_id": project,
                                 "tenant_id": project}
            s["ports"].append(port_id)
        st.servers[server_id] = s
        return lab_server(st, s)


def lab_server(st, s):
    view = server_view(st, s, parse_version(st.settings["maxMicroversion"]), "")
    view["lab"] = {"projectId": s["project_id"], "flavorId": s["flavor_id"], "baseImageId": s["image_id"],
                   "rootDisk": s["root_disk"],
                   "volumes": [dict(a, path=st.volumes[a["volume_id"]]["path"]) for a in s["attachments"]],
                   "ports": [public(st.ports[p]) for p in s["ports"]]}
    return view


def delete_server(st, s):
    for att in s["attachments"]:
        v = st.volumes.pop(att["volume_id"], None)
        if v:
            try:
                os.remove(v["path"])
            except FileNotFoundError:
                pass
    for port_id in s["ports"]:
        st.ports.pop(port_id, None)
    st.servers.pop(s["id"], None)


def objects(st, query):
    """Everything in the fakes plus every Glance image, optionally only names starting with a prefix."""
    prefix = (query.get("namePrefix") or [""])[0]
    images = st.glance.list_images(st.keystone.admin_token())
    with st.lock:
        keep = lambda o: (o.get("name") or "").startswith(prefix)  # noqa: E731
        return {"servers": [{"id": s["id"], "name": s["name"], "status": s["status"]} for s in st.servers.values() if keep(s)],
                "volumes": [volume_view(v) for v in st.volumes.values() if keep(v)],
                "snapshots": [snapshot_view(s) for s in st.snapshots.values() if keep(s)],
                "images": [{"id": i["id"], "name": i.get("name"), "status": i["status"]} for i in images if keep(i)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    cfg = json.load(open(args.config))
    client_ctx = ssl.create_default_context(cafile=cfg["caFile"])
    keystone = Keystone(cfg, client_ctx)
    state = State(cfg, keystone, Glance(cfg["glanceUrl"]))
    Handler.st = state
    server = ThreadingHTTPServer(("127.0.0.1", cfg["port"]), Handler)
    server.daemon_threads = True
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cfg["certFile"], cfg["keyFile"])
    # The handshake happens on first read, in the connection's own thread: a stalled client cannot block accept.
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    log(f"serving on https://127.0.0.1:{cfg['port']}")
    server.serve_forever()


if __name__ == "__main__":
    main()
