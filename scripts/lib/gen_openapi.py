import json
import sys

err = {"$ref": "#/components/responses/Error"}
def errs(*codes):
    return {str(c): err for c in codes}
endpoint_desc = "An agent id, a selector `key=value[,key=value]`, or a URL (`https://...`, `tcp://host:port`, ...)."
spec_schema = {
  "type": "object", "additionalProperties": False,
  "description": "A job spec. Ranges are checked by one validator (proto/src/job.rs) for REST, gRPC, the CLI and federation peers; a value out of range is 400 naming the field and the limit.",
  "properties": {
    "name": {"type": "string", "maxLength": 256},
    "kind": {"type": "string", "enum": ["probe", "relay"], "default": "probe"},
    "protocols": {"type": "array", "minItems": 1, "maxItems": 5, "uniqueItems": True,
                  "items": {"type": "string", "enum": ["udp", "tcp", "quic", "http", "https"]}},
    "sources": {"type": "array", "minItems": 1, "maxItems": 64, "items": {"type": "string", "description": endpoint_desc}},
    "targets": {"type": "array", "minItems": 1, "maxItems": 256, "items": {"type": "string", "description": endpoint_desc}},
    "relays": {"type": "array", "maxItems": 16, "items": {"type": "string", "description": endpoint_desc}},
    "interval_ms": {"type": "integer", "minimum": 10, "maximum": 86400000},
    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 120000, "description": "Below interval_ms."},
    "payload_bytes": {"type": "integer", "minimum": 0, "maximum": 1452},
    "packets": {"type": "integer", "minimum": 0, "maximum": 10000},
    "packet_interval_ms": {"type": "integer", "minimum": 0, "maximum": 10000},
    "count": {"type": "integer", "minimum": 0, "maximum": 1000000000},
    "duration_ms": {"type": "integer", "minimum": 0, "maximum": 31622400000},
    "strategy": {"type": "string", "enum": ["full", "per-region", "k-random", "per_region", "k_random"], "default": "full"},
    "k": {"type": "integer", "minimum": 0, "maximum": 1000},
  },
  "required": ["protocols", "sources", "targets", "interval_ms", "timeout_ms"],
  "example": {"name": "mesh", "protocols": ["udp", "tcp"], "sources": ["region=eu-west-1"],
              "targets": ["region=eu-west-1"], "interval_ms": 1000, "timeout_ms": 500},
}
spec_out = {
  "type": "object",
  "properties": {k: ({"type": v["type"]} if v["type"] != "array" else {"type": "array", "items": {"type": "string"}}) for k, v in spec_schema["properties"].items()},
}
job = {"type": "object", "required": ["id", "version", "stopped"],
       "properties": {"id": {"type": "string"}, "version": {"type": "integer"},
                      "created_unix_ms": {"type": "integer"}, "updated_unix_ms": {"type": "integer"},
                      "stopped": {"type": "boolean"},
                      "spec": {"oneOf": [{"$ref": "#/components/schemas/JobSpecOut"}, {"type": "null"}]}}}
agent = {"type": "object", "required": ["id"],
         "properties": {k: {"type": t} for k, t in [("id", "string"), ("region", "string"), ("az", "string"), ("location", "string"),
                        ("version", "string"), ("connected", "boolean"), ("last_seen_unix_ms", "integer"), ("controller_region", "string")]}}
cell = {"type": "object", "properties": {"src": {"type": "string"}, "dst": {"type": "string"}, "protocol": {"type": "string"},
        "p50_ms": {"type": "number"}, "p99_ms": {"type": "number"}, "loss": {"type": "number", "minimum": 0, "maximum": 1},
        "samples": {"type": "integer"}}}
matrix = {"type": "object", "required": ["unix_ms", "cells"], "properties": {"unix_ms": {"type": "integer"},
          "cells": {"type": "array", "items": {"$ref": "#/components/schemas/MatrixCell"}}}}
cred = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "origin": {"type": "string"},
        "created_unix": {"type": "integer"}, "credential": {"type": "string", "description": "NAME:SECRET, only in the answer to POST (shown once)."}}}
token = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
         "created_unix": {"type": "integer", "description": "0: the default (seeded or generated) token."},
         "expires_unix": {"type": "integer", "nullable": True, "description": "When it stops admitting new agents; null: never."},
         "revoked_unix": {"type": "integer", "nullable": True, "description": "When it was revoked; null: not revoked."},
         "token": {"type": "string", "description": "mlt1.<ca-sha256>.<secret>, only in the answer to POST (shown once)."}}}
error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
         "properties": {"code": {"type": "string", "enum": ["invalid_argument", "unauthenticated", "not_found", "method_not_allowed",
                         "failed_precondition", "already_exists", "resource_exhausted", "internal"]},
                        "field": {"type": "string", "nullable": True}, "limit": {"type": "integer", "nullable": True}, "message": {"type": "string"}}}}}
id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 128}}
name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 128}}
by_param = {"name": "by", "in": "query", "required": False, "schema": {"type": "string", "enum": ["agent", "region"]}}
proto_param = {"name": "protocol", "in": "query", "required": False, "schema": {"type": "string", "enum": ["udp", "tcp", "quic", "http", "https"]}}
def ok(code, schema, desc="OK"):
    return {str(code): {"description": desc, "content": {"application/json": {"schema": schema}}}}
def ref(n):
    return {"$ref": f"#/components/schemas/{n}"}
common = (401, 429)
doc = {
  "openapi": "3.0.3",
  "info": {"title": "meshlat controller REST API", "version": "1",
           "description": "The operator API of a meshlat controller (REST mirror of the gRPC OperatorService). Every call but this document needs `Authorization: Bearer NAME:SECRET`. Errors are `{\"error\": {\"code\", \"field\", \"limit\", \"message\"}}`."},
  "servers": [{"url": "/"}],
  "security": [{"operator": []}],
  "paths": {
    "/api/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "This document (no credential needed).", "security": [],
        "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}, **errs(429)}}},
    "/api/v1/jobs": {
      "get": {"operationId": "listJobs", "parameters": [{"name": "include_stopped", "in": "query", "required": False, "schema": {"type": "boolean"}}],
              "responses": {**ok(200, {"type": "object", "required": ["jobs"], "properties": {"jobs": {"type": "array", "items": ref("Job")}}}), **errs(*common)}},
      "post": {"operationId": "startJob", "requestBody": {"required": True, "content": {"application/json": {"schema": ref("JobSpec")}}},
               "responses": {**ok(201, ref("Job"), "Started"), **errs(400, 413, *common)}}},
    "/api/v1/jobs/{id}": {
      "parameters": [id_param],
      "get": {"operationId": "getJob", "responses": {**ok(200, ref("Job")), **errs(404, *common)}},
      "put": {"operationId": "updateJob", "parameters": [{"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}}],
              "requestBody": {"required": True, "content": {"application/json": {"schema": ref("JobSpec")}}},
              "responses": {**ok(200, ref("Job")), **errs(400, 404, 409, 412, 413, *common)}},
      "delete": {"operationId": "stopJob", "responses": {**ok(200, ref("Job")), **errs(404, *common)}}},
    "/api/v1/agents": {"get": {"operationId": "listAgents",
        "responses": {**ok(200, {"type": "object", "required": ["agents"], "properties": {"agents": {"type": "array", "items": ref("Agent")}}}), **errs(*common)}}},
    "/api/v1/matrix": {"get": {"operationId": "getMatrix", "parameters": [by_param, proto_param],
        "responses": {**ok(200, ref("Matrix")), **errs(400, *common)}}},
    "/api/v1/stream": {"get": {"operationId": "streamMatrix", "parameters": [by_param, proto_param],
        "responses": {"200": {"description": "Server-sent events: `event: matrix` with a Matrix as JSON on one `data:` line, and `: heartbeat` comments.",
                              "content": {"text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {"event": {"type": "string", "enum": ["matrix"]}, "data": {"type": "string", "description": "A Matrix as JSON."}}}}}}, **errs(400, *common)}}},
    "/api/v1/credentials": {
      "get": {"operationId": "listCredentials",
              "responses": {**ok(200, {"type": "object", "required": ["credentials"], "properties": {"credentials": {"type": "array", "items": ref("Credential")}}}), **errs(*common)}},
      "post": {"operationId": "addCredential", "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["name"],
                 "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9._-]+$"}}}}}},
               "responses": {**ok(201, ref("Credential"), "Added; `credential` is shown once"), **errs(400, 409, 413, *common)}}},
    "/api/v1/credentials/{name}": {"parameters": [name_param],
      "delete": {"operationId": "revokeCredential", "responses": {**ok(200, ref("Credential"), "Revoked"), **errs(400, 404, 409, *common)}}},
    "/api/v1/tokens": {
      "get": {"operationId": "listTokens", "summary": "Join tokens (never their secrets), revoked and expired ones included.",
              "responses": {**ok(200, {"type": "object", "required": ["tokens"], "properties": {"tokens": {"type": "array", "items": ref("JoinToken")}}}), **errs(*common)}},
      "post": {"operationId": "createToken", "summary": "A new named join token, optionally expiring.",
               "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["name"],
                 "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9._-]+$"},
                                "expires_in_s": {"type": "integer", "minimum": 1, "maximum": 316224000, "nullable": True}}}}}},
               "responses": {**ok(201, ref("JoinToken"), "Created; `token` is shown once"), **errs(400, 409, 413, *common)}}},
    "/api/v1/tokens/{name}": {"parameters": [name_param],
      "delete": {"operationId": "revokeToken", "summary": "Revoke: it admits no new agent; agents holding their certificate keep working.",
                 "responses": {**ok(200, ref("JoinToken"), "Revoked"), **errs(400, 404, 409, *common)}}},
  },
  "components": {
    "securitySchemes": {"operator": {"type": "http", "scheme": "bearer", "description": "NAME:SECRET, an operator credential."}},
    "responses": {"Error": {"description": "An error naming what is wrong", "content": {"application/json": {"schema": ref("Error")}}}},
    "schemas": {"JobSpec": spec_schema, "JobSpecOut": spec_out, "Job": job, "Agent": agent, "MatrixCell": cell, "Matrix": matrix,
                "Credential": cred, "JoinToken": token, "Error": error},
  },
}
json.dump(doc, open(sys.argv[1], "w"), indent=1, sort_keys=False)
print("wrote", sys.argv[1])
