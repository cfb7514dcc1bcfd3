"""The guard's OpenAPI 3.1 document, built from its config (input shape, batch limit, value range)."""

from __future__ import annotations

from typing import Any


def _nested(shape: tuple[int, ...], lo: float, hi: float) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number", "minimum": lo, "maximum": hi}
    for d in reversed(shape):
        schema = {"type": "array", "items": schema, "minItems": d, "maxItems": d}
    return schema


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _limited(description: str) -> dict[str, Any]:
    out = _error(description)
    out["headers"] = {
        "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait (RFC 9110)."},
        "RateLimit": {
            "schema": {"type": "string"},
            "description": "draft-ietf-httpapi-ratelimit-headers-10.",
        },
        "RateLimit-Policy": {
            "schema": {"type": "string"},
            "description": "draft-ietf-httpapi-ratelimit-headers-10.",
        },
    }
    return out


def build(
    *,
    model_name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    max_batch: int,
    input_range: tuple[float, float],
    key_header: str = "X-API-Key",
) -> dict[str, Any]:
    lo, hi = input_range
    sample = _nested(input_shape, lo, hi)
    size = 1
    for d in input_shape:
        size *= d
    row = {"type": "array", "items": {"type": "number"}, "minItems": num_classes, "maxItems": num_classes}
    errors = {
        "400": _error("Malformed JSON or inputs of the wrong shape, type or range."),
        "401": _error("Missing, invalid or revoked API key."),
        "404": _error("Unknown model name."),
        "413": _error("Request body larger than the configured limit."),
        "415": _error(
            "Content-Type is not application/json, or a Content-Encoding the guard does not decode."
        ),
        "429": _limited("Rate limit or query budget exceeded."),
        "502": _error("The upstream model server failed."),
        "503": _error("The audit log cannot be written or the rate-limit backend is down; no prediction."),
    }
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        "description": f"The model name (this guard serves {model_name!r}).",
    }

    def v2_input(n: int) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "maxLength": 64},
                "shape": {
                    "type": "array",
                    "prefixItems": [{"const": n}] + [{"const": d} for d in input_shape],
                    "items": False,
                    "minItems": len(input_shape) + 1,
                },
                "datatype": {"enum": ["FP32", "FP64"]},
                "data": {
                    "type": "array",
                    "items": {"type": "number", "minimum": lo, "maximum": hi},
                    "minItems": n * size,
                    "maxItems": n * size,
                },
            },
        }

    # the flat v2 ``data`` must hold exactly shape[0] * prod(input_shape) values: one exact
    # alternative per batch size (JSON Schema cannot multiply); listed up to 64 samples
    v2_tensor = {"anyOf": [v2_input(n) for n in range(1, min(max_batch, 64) + 1)]}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "invguard guard",
            "version": "1",
            "description": "A gateway in front of a model: API keys and roles, rate limits and "
            "query budgets, "
            "output policies and a tamper-evident audit log.",
        },
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": key_header},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "error"],
                    "additionalProperties": False,
                    "properties": {"code": {"type": "string"}, "error": {"type": "string"}},
                },
                "PredictRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "additionalProperties": False,
                    "properties": {
                        "inputs": {"type": "array", "items": sample, "minItems": 1, "maxItems": max_batch}
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "required": ["labels", "policy", "access"],
                    "additionalProperties": False,
                    "properties": {
                        "labels": {
                            "type": "array",
                            "items": {"type": "integer", "minimum": 0, "maximum": num_classes - 1},
                        },
                        "scores": {"type": "array", "items": row},
                        "logits": {"type": "array", "items": row},
                        "policy": {"type": "string"},
                        "access": {"enum": ["label", "scores", "logits"]},
                    },
                },
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string", "maxLength": 128},
                        "inputs": {"type": "array", "items": v2_tensor, "minItems": 1, "maxItems": 1},
                    },
                    "additionalProperties": False,
                },
                "InferResponse": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype", "data"],
                                "properties": {
                                    "name": {"enum": ["labels", "scores", "logits"]},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"enum": ["INT64", "FP64"]},
                                    "data": {"type": "array", "items": {"type": "number"}},
                                },
                            },
                        },
                    },
                },
            },
        },
        "security": [{"apiKey": []}, {"bearer": []}],
        "paths": {
            "/v1/models/{name}/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Predict a batch; the answer is reduced by the caller's role's output policy.",
                    "parameters": [name_param],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Labels always; scores and logits only where the policy allows.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/PredictResponse"}
                                }
                            },
                        },
                        **errors,
                    },
                }
            },
            "/v2/models/{name}/infer": {
                "post": {
                    "operationId": "infer",
                    "summary": "KServe / Open Inference Protocol v2 compatible inference.",
                    "parameters": [name_param],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Outputs reduced by the role's policy.",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}}
                            },
                        },
                        **errors,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "security": [],
                    "responses": {"200": {"description": "The process is alive."}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "security": [],
                    "responses": {"200": {"description": "Ready."}, "503": {"description": "Not ready."}},
                }
            },
        },
    }
