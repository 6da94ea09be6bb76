# Generates admin-api.json (the OpenAPI 3 description served at /admin/api/openapi.json).
# Run: python3 openapi/gen.py   (then commit both files)
import json
E = {"$ref": "#/components/responses/Error"}
def errs(*codes):
    # every authenticated operation may also answer 429 (failed-authentication throttling)
    if 401 in codes:
        codes = codes + (429,)
    # a change that cannot be saved (storage full, read-only) is refused whole
    if 400 in codes or 409 in codes or 412 in codes or 428 in codes:
        codes = codes + (503,)
    return {str(c): E for c in codes}
def ok(schema, code="200", etag=False):
    r = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    if etag:
        r["headers"] = {"ETag": {"description": "the object's version, quoted", "schema": {"type": "string"}}}
    return {code: r}
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def body(schema): return {"required": True, "content": {"application/json": {"schema": schema}}}
name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}}
ifmatch = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
           "description": "the object's ETag, or \"*\"; required (428 without it)"}
inactive = {"name": "include-non-active", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]}}
region = {"name": "region", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}}
def q(n, schema=None, required=False):
    return {"name": n, "in": "query", "required": required, "schema": schema or {"type": "string"}}
NS = {"type": "string", "nullable": True}
SCOPES = ["metrics:read", "metrics:write", "metrics:delete", "metrics:import", "logs:read", "logs:write", "logs:delete",
          "traces:read", "traces:write", "traces:delete", "profiles:read", "profiles:write", "rules:read", "rules:write",
          "alerts:read", "alerts:write", "admin", "accesspolicies:read", "accesspolicies:write", "accesspolicies:delete"]
SCOPE_LIST = {"type": "array", "items": {"type": "string", "enum": SCOPES}}
GEM_NAME = {"type": "string", "pattern": "^[a-z0-9_-]{3,64}$"}
TOKEN_NAME = {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}
CLOUD_NAME = {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}
schemas = {
  "Error": {"type": "object", "required": ["status", "errorType", "error"], "properties": {
      "status": {"type": "string", "enum": ["error"]}, "errorType": {"type": "string"}, "error": {"type": "string"}}},
  "Cluster": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "display_name": {"type": "string"}, "created_at": {"type": "string"}}},
  "Features": {"type": "object", "required": ["name", "version", "features"], "properties": {
      "name": {"type": "string"}, "version": {"type": "string"}, "features": {"type": "object", "additionalProperties": {"type": "string"}}}},
  "Status": {"type": "string", "enum": ["active", "inactive"]},
  "Tenant": {"type": "object", "required": ["name", "created_at", "status", "cluster"], "properties": {
      "name": {"type": "string"}, "display_name": NS, "created_at": {"type": "string"},
      "status": ref("Status"), "cluster": {"type": "string"}}},
  "TenantInput": {"type": "object", "required": ["name"], "properties": {
      "name": GEM_NAME, "display_name": {"type": "string"}, "status": ref("Status"), "cluster": {"type": "string", "enum": ["local"]}}},
  "Matcher": {"type": "object", "required": ["type", "name", "value"], "properties": {
      "type": {"type": "string", "enum": ["EQ", "NEQ", "RE", "NRE"]}, "name": {"type": "string"}, "value": {"type": "string"}}},
  "LabelPolicy": {"type": "object", "required": ["selector"], "properties": {
      "selector": {"type": "array", "items": ref("Matcher")}}},
  "LabelPolicyInput": {"type": "object", "required": ["selector"], "properties": {
      "selector": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object", "properties": {
          "type": {"type": "string"}, "name": {"type": "string"}, "value": {"type": "string"}}}}]}}},
  "RealmV3": {"type": "object", "required": ["tenant", "cluster"], "properties": {
      "tenant": {"type": "string"}, "cluster": {"type": "string"},
      "label_policies": {"type": "array", "items": ref("LabelPolicy")}}},
  "RealmV1": {"type": "object", "required": ["instance", "cluster"], "properties": {
      "instance": {"type": "string"}, "cluster": {"type": "string"},
      "label_policies": {"type": "array", "items": ref("LabelPolicy")}}},
  "Token": {"type": "object", "required": ["name", "created_at", "status", "access_policy", "expiration"], "properties": {
      "name": {"type": "string"}, "display_name": NS, "created_by": {"type": "string"}, "created_at": {"type": "string"},
      "status": ref("Status"), "access_policy": {"type": "string"}, "expiration": {"type": "string"},
      "token": {"type": "string", "description": "only in the response to a create"}}},
  "TokenInput": {"type": "object", "required": ["name", "access_policy"], "properties": {
      "name": TOKEN_NAME, "display_name": {"type": "string"}, "access_policy": {"type": "string", "enum": ["demo-rw", "demo-ro"]},
      "expiration": {"type": "string", "format": "date-time"}, "status": ref("Status")}},
  "CloudRealm": {"type": "object", "required": ["type", "identifier"], "properties": {
      "type": {"type": "string", "enum": ["org", "stack"]}, "identifier": {"type": "string"},
      "labelPolicies": {"type": "array", "items": {"type": "object", "required": ["selector"], "properties": {"selector": {"type": "string"}}}}}},
  "CloudPolicy": {"type": "object", "required": ["id", "orgId", "name", "displayName", "scopes", "realms", "createdAt", "updatedAt", "status"], "properties": {
      "id": {"type": "string", "format": "uuid"}, "orgId": {"type": "string"}, "name": {"type": "string"},
      "displayName": {"type": "string"}, "scopes": {"type": "array", "items": {"type": "string"}},
      "realms": {"type": "array", "items": ref("CloudRealm")},
      "conditions": {"type": "object", "properties": {"allowedSubnets": {"type": "array", "items": {"type": "string"}}}},
      "createdAt": {"type": "string"}, "updatedAt": {"type": "string"}, "status": ref("Status")}},
  "CloudPolicyInput": {"type": "object", "required": ["name", "scopes", "realms"], "properties": {
      "name": CLOUD_NAME, "displayName": {"type": "string", "minLength": 1, "maxLength": 255}, "scopes": SCOPE_LIST,
      "realms": {"type": "array", "items": ref("CloudRealm")}, "status": ref("Status"),
      "conditions": {"type": "object", "nullable": True, "properties": {"allowedSubnets": {"type": "array", "items": {"type": "string"}}}}}},
  "CloudToken": {"type": "object", "required": ["id", "accessPolicyId", "name", "displayName", "createdAt", "updatedAt"], "properties": {
      "id": {"type": "string", "format": "uuid"}, "accessPolicyId": {"type": "string"}, "name": {"type": "string"},
      "displayName": {"type": "string"}, "expiresAt": NS, "firstUsedAt": NS, "lastUsedAt": NS,
      "createdAt": {"type": "string"}, "updatedAt": {"type": "string"},
      "token": {"type": "string", "description": "only in the response to a create"}}},
  "CloudTokenInput": {"type": "object", "required": ["name", "accessPolicyId"], "properties": {
      "name": CLOUD_NAME, "displayName": {"type": "string", "minLength": 1, "maxLength": 255}, "accessPolicyId": {"type": "string"},
      "expiresAt": {"type": "string", "format": "date-time", "nullable": True}}},
  "Pagination": {"type": "object", "required": ["metadata"], "properties": {"metadata": {"type": "object", "required": ["pagination"], "properties": {
      "pagination": {"type": "object", "required": ["pageSize"], "properties": {
          "pageSize": {"type": "integer"}, "pageCursor": NS, "nextPage": NS}}}}}},
  "ServiceAccount": {"type": "object", "required": ["id", "name", "login", "orgId", "isDisabled", "role"], "properties": {
      "id": {"type": "integer"}, "name": {"type": "string"}, "login": {"type": "string"},
      "orgId": {"oneOf": [{"type": "integer"}, {"type": "string"}]}, "isDisabled": {"type": "boolean"},
      "role": {"type": "string", "enum": ["Viewer", "Editor", "Admin"]}, "tokens": {"type": "integer"},
      "createdAt": {"type": "string"}, "updatedAt": {"type": "string"}, "avatarUrl": {"type": "string"},
      "teams": {"type": "array", "items": {}}}},
  "ServiceAccountInput": {"type": "object", "properties": {
      "name": {"type": "string", "minLength": 1, "maxLength": 190, "pattern": "^[A-Za-z0-9 _-]+$"}, "role": {"type": "string", "enum": ["Viewer", "Editor", "Admin"]},
      "isDisabled": {"type": "boolean"}, "orgId": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}},
  "SaToken": {"type": "object", "required": ["id", "name", "role", "created", "secondsUntilExpiration", "hasExpired"], "properties": {
      "id": {"type": "integer"}, "name": {"type": "string"}, "role": {"type": "string"}, "created": {"type": "string"},
      "expiration": NS, "secondsUntilExpiration": {"type": "integer"}, "hasExpired": {"type": "boolean"}}},
}
paths = {}
def gem(prefix, tenants, realm, v1):
    ttype = "instance" if v1 else "tenant"
    lt = lambda k: {"type": "object", "required": ["items", "type"], "properties": {"items": {"type": "array", "items": ref(k)}, "type": {"type": "string"}}}
    policy = {"type": "object", "required": ["name", "created_at", "status", "realms", "scopes"], "properties": {
        "name": {"type": "string"}, "display_name": NS, "created_at": {"type": "string"}, "status": ref("Status"),
        "realms": {"type": "array", "items": ref(realm)}, "scopes": {"type": "array", "items": {"type": "string"}}}}
    if v1:
        policy["required"].append("expiration")
        policy["properties"]["expiration"] = {"type": "string"}
    rk = "instance" if v1 else "tenant"
    pin = {"type": "object", "required": ["name"], "properties": {
        "name": GEM_NAME, "display_name": {"type": "string"}, "status": ref("Status"),
        "realms": {"type": "array", "items": {"type": "object", "required": [rk], "additionalProperties": False, "properties": {
            rk: {"type": "string", "enum": ["demo", "team-b", "*"]}, "cluster": {"type": "string", "enum": ["local"]},
            "label_policies": {"type": "array", "items": ref("LabelPolicyInput")}}}},
        "scopes": SCOPE_LIST}}
    if v1:
        pin["properties"]["expiration"] = {"type": "string", "format": "date-time"}
    schemas["Policy" + ("V1" if v1 else "V3")] = policy
    P = ref("Policy" + ("V1" if v1 else "V3"))
    paths[f"{prefix}/clusters"] = {"get": {"responses": {**ok(lt("Cluster")), **errs(401, 403)}}}
    paths[f"{prefix}/clusters/{{name}}"] = {"get": {"parameters": [name_param], "responses": {**ok(ref("Cluster"), etag=True), **errs(401, 403, 404)}}}
    paths[f"{prefix}/features"] = {"get": {"responses": {**ok(ref("Features")), **errs(401, 403)}}}
    for coll, item, inp in [(tenants, ref("Tenant"), ref("TenantInput")), ("accesspolicies", P, pin), ("tokens", ref("Token"), ref("TokenInput"))]:
        listing = {"type": "object", "required": ["items", "type"], "properties": {"items": {"type": "array", "items": item}, "type": {"type": "string"}}}
        paths[f"{prefix}/{coll}"] = {
            "get": {"parameters": [inactive], "responses": {**ok(listing), **errs(401, 403)}},
            "post": {"requestBody": body(inp), "responses": {**ok(item, etag=True), **errs(400, 401, 403, 409, 413)}},
        }
        one = {
            "get": {"parameters": [name_param], "responses": {**ok(item, etag=True), **errs(401, 403, 404)}},
            "put": {"parameters": [name_param, ifmatch], "requestBody": body(inp),
                    "responses": {**ok(item, etag=True), **errs(400, 401, 403, 404, 409, 412, 413, 428)}},
        }
        if v1:
            one["delete"] = {"parameters": [name_param, ifmatch], "responses": {"204": {"description": "deleted"}, **errs(400, 401, 403, 404, 409, 412, 428)}}
        paths[f"{prefix}/{coll}/{{name}}"] = one
gem("/admin/api/v3", "tenants", "RealmV3", False)
gem("/admin/api/v1", "instances", "RealmV1", True)
idp = lambda n: {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
page_params = [q("pageSize", {"type": "integer", "minimum": 1, "maximum": 500}), q("pageCursor")]
listof = lambda k: {"allOf": [ref("Pagination"), {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": ref(k)}}}]}
paths["/api/v1/accesspolicies"] = {
    "get": {"parameters": [region, q("name"), q("realmType", {"type": "string", "enum": ["org", "stack"]}), q("realmIdentifier"),
                           q("status", {"type": "string", "enum": ["active", "inactive"]})] + page_params,
            "responses": {**ok(listof("CloudPolicy")), **errs(400, 401, 403)}},
    "post": {"parameters": [region], "requestBody": body(ref("CloudPolicyInput")), "responses": {**ok(ref("CloudPolicy")), **errs(400, 401, 403, 409, 413)}},
}
paths["/api/v1/accesspolicies/{accessPolicyId}"] = {
    "get": {"parameters": [region, idp("accessPolicyId")], "responses": {**ok(ref("CloudPolicy")), **errs(400, 401, 403, 404)}},
    "post": {"parameters": [region, idp("accessPolicyId")], "requestBody": body(ref("CloudPolicyInput")), "responses": {**ok(ref("CloudPolicy")), **errs(400, 401, 403, 404, 409, 413)}},
    "delete": {"parameters": [region, idp("accessPolicyId")], "responses": {"204": {"description": "deleted"}, **errs(400, 401, 403, 404)}},
}
paths["/api/v1/tokens"] = {
    "get": {"parameters": [region, q("accessPolicyId"), q("accessPolicyName"), q("accessPolicyRealmType", {"type": "string", "enum": ["org", "stack"]}),
                           q("accessPolicyRealmIdentifier"), q("name"), q("expiresBefore", {"type": "string", "format": "date-time"}),
                           q("expiresAfter", {"type": "string", "format": "date-time"}), q("accessPolicyStatus", {"type": "string", "enum": ["active", "inactive"]})] + page_params,
            "responses": {**ok(listof("CloudToken")), **errs(400, 401, 403)}},
    "post": {"parameters": [region], "requestBody": body(ref("CloudTokenInput")), "responses": {**ok(ref("CloudToken")), **errs(400, 401, 403, 409, 413)}},
}
paths["/api/v1/tokens/{tokenId}"] = {
    "get": {"parameters": [region, idp("tokenId")], "responses": {**ok(ref("CloudToken")), **errs(400, 401, 403, 404)}},
    "post": {"parameters": [region, idp("tokenId")], "requestBody": body(ref("CloudTokenInput")), "responses": {**ok(ref("CloudToken")), **errs(400, 401, 403, 404, 413)}},
    "delete": {"parameters": [region, idp("tokenId")], "responses": {"204": {"description": "deleted"}, **errs(400, 401, 403, 404)}},
}
sid = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
paths["/api/serviceaccounts/search"] = {"get": {"parameters": [q("perpage", {"type": "integer", "minimum": 1}), q("page", {"type": "integer", "minimum": 1}), q("query")],
    "responses": {**ok({"type": "object", "required": ["totalCount", "serviceAccounts", "page", "perPage"], "properties": {
        "totalCount": {"type": "integer"}, "serviceAccounts": {"type": "array", "items": ref("ServiceAccount")},
        "page": {"type": "integer"}, "perPage": {"type": "integer"}}}), **errs(400, 401, 403)}}}
paths["/api/serviceaccounts"] = {"post": {"requestBody": body(ref("ServiceAccountInput")), "responses": {**ok(ref("ServiceAccount"), code="201"), **errs(400, 401, 403, 409, 413)}}}
paths["/api/serviceaccounts/{id}"] = {
    "get": {"parameters": [sid], "responses": {**ok(ref("ServiceAccount")), **errs(401, 403, 404)}},
    "patch": {"parameters": [sid], "requestBody": body(ref("ServiceAccountInput")), "responses": {**ok(ref("ServiceAccount")), **errs(400, 401, 403, 404, 409, 413)}},
}
paths["/api/serviceaccounts/{id}/tokens"] = {
    "get": {"parameters": [sid], "responses": {**ok({"type": "array", "items": ref("SaToken")}), **errs(401, 403, 404)}},
    "post": {"parameters": [sid], "requestBody": body({"type": "object", "properties": {"name": {"type": "string"}, "role": {"type": "string"}, "secondsToLive": {"type": "integer", "minimum": 0}}}),
             "responses": {**ok({"type": "object", "required": ["id", "name", "key"], "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "key": {"type": "string"}}}), **errs(400, 401, 403, 404, 409, 413)}},
}
paths["/api/serviceaccounts/{id}/tokens/{tokenId}"] = {
    "delete": {"parameters": [sid, {"name": "tokenId", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
               "responses": {**ok({"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}), **errs(401, 403, 404)}},
}
doc = {
  "openapi": "3.0.3",
  "info": {"title": "obsgate admin API", "version": "0.1.0",
           "description": "GEM/GET v3 and v1, Grafana Cloud access policies and tokens, and Grafana service accounts, as obsgate serves them (see README.md, Admin API)."},
  "servers": [{"url": "http://127.0.0.1:8080"}],
  "security": [{"bearer": []}, {"basic": []}],
  "components": {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}, "basic": {"type": "http", "scheme": "basic"}},
    "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": ref("Error")}}}},
    "schemas": schemas},
  "paths": paths,
}
import os
json.dump(doc, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "admin-api.json"), "w"), indent=1, sort_keys=True)
print(len(paths), "paths")
