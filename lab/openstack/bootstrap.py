"""Shapes a freshly started lab Keystone over its REST API (what `keystone-manage bootstrap` cannot do
with ports that are only known at `lab/up` time): the admin password, regions, the service catalog,
the test domain, projects, users, role assignments and an application credential.

    python3 bootstrap.py SPEC.json OUT.json

SPEC: {"keystone": URL, "cafile": PEM, "adminPassword": current, "newAdminPassword": new,
       "services": [{"type", "name", "region", "url"}], "extraRegions": [id],
       "glancePassword": P, "fakesPassword": P, "importerPassword": P}
OUT: {"projectId", "altProjectId", "appCredId", "appCredSecret", ...}
Standard library only, so it runs with any Python 3.
"""

import json
import ssl
import sys
import urllib.error
import urllib.request


class Keystone:
    def __init__(self, url, cafile):
        self.url = url.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=cafile)
        self.token = None

    def call(self, method, path, body=None, token=None, expect=(200, 201, 204)):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        tok = token or self.token
        if tok:
            req.add_header("X-Auth-Token", tok)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=60) as resp:
                raw = resp.read()
                headers = resp.headers
                status = resp.status
        except urllib.error.HTTPError as err:
            raise SystemExit(f"bootstrap: {method} {path}: HTTP {err.code}: {err.read()[:400]!r}")
        if status not in expect:
            raise SystemExit(f"bootstrap: {method} {path}: HTTP {status}")
        return (json.loads(raw) if raw else {}), headers

    def login(self, user, password, project, user_domain="Default", project_domain="Default"):
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": user_domain}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": project_domain}}}}}
        doc, headers = self.call("POST", "/v3/auth/tokens", body, token="-")
        return headers["X-Subject-Token"], doc["token"]


def main():
    spec = json.load(open(sys.argv[1]))
    ks = Keystone(spec["keystone"], spec["cafile"])
    ks.token, token = ks.login("admin", spec["adminPassword"], "admin")

    roles = {r["name"]: r["id"] for r in ks.call("GET", "/v3/roles")[0]["roles"]}
    default_domain = "default"

    def create(kind, body):
        return ks.call("POST", f"/v3/{kind}s", {kind: body})[0][kind]

    for region in spec.get("extraRegions", []):
        create("region", {"id": region})
    # One service entry per type, with public and internal endpoints per region it is offered in.
    services = {}
    for svc in spec["services"]:
        key = svc["type"]
        if key not in services:
            services[key] = create("service", {"type": svc["type"], "name": svc["name"], "enabled": True})
        for interface in ("public", "internal"):
            create("endpoint", {"service_id": services[key]["id"], "interface": interface,
                                "region_id": svc["region"], "url": svc["url"], "enabled": True})

    service_project = create("project", {"name": "service", "domain_id": default_domain})
    lab_domain = create("domain", {"name": "lab", "description": "vm-import lab: users and projects for tests"})
    project = create("project", {"name": "migrations", "domain_id": lab_domain["id"]})
    alt_project = create("project", {"name": "elsewhere", "domain_id": default_domain})

    def user(name, password, domain_id):
        return create("user", {"name": name, "password": password, "domain_id": domain_id, "enabled": True})

    def grant(project_id, user_id, role):
        ks.call("PUT", f"/v3/projects/{project_id}/users/{user_id}/roles/{roles[role]}")

    # Glance's keystonemiddleware and the fakes validate tokens: the service role on the service project.
    for name, password in (("glance", spec["glancePassword"]), ("fakes", spec["fakesPassword"])):
        u = user(name, password, default_domain)
        grant(service_project["id"], u["id"], "service")
        grant(service_project["id"], u["id"], "admin")
    importer = user("importer", spec["importerPassword"], lab_domain["id"])
    grant(project["id"], importer["id"], "member")
    grant(alt_project["id"], importer["id"], "member")

    # An application credential belongs to the user and is created with the user's own token.
    user_token, _ = ks.login("importer", spec["importerPassword"], "migrations", "lab", "lab")
    cred = ks.call("POST", f"/v3/users/{importer['id']}/application_credentials",
                   {"application_credential": {"name": "vm-import-lab", "description": "tests"}},
                   token=user_token)[0]["application_credential"]

    # Last: changing a password revokes the user's tokens (to the second), so nothing may follow it.
    ks.call("PATCH", f"/v3/users/{token['user']['id']}", {"user": {"password": spec["newAdminPassword"]}})

    json.dump({"projectId": project["id"], "altProjectId": alt_project["id"],
               "serviceProjectId": service_project["id"], "domainId": lab_domain["id"],
               "importerId": importer["id"], "appCredId": cred["id"], "appCredSecret": cred["secret"]},
              open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
