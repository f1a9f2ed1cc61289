//! The OpenAPI 3.1 description of the control plane's public endpoints, served at
//! `/openapi.json`. Internal endpoints (`/internal/…`, for the origin, workers and operator
//! tools) are left out: they are not a contract with players.

use serde_json::{Value, json};

/// Public paths, as the spec names them; a test checks each is served.
pub const PUBLIC_PATHS: &[&str] = &[
    "/healthz",
    "/openapi.json",
    "/v1/playback",
    "/v1/search",
    "/v1/tracks/{id}",
    "/v1/albums/{id}",
    "/v1/artists/{id}",
    "/v1/edge-keys",
    "/v1/accounts",
    "/oauth/token",
    "/v1/me",
    "/v1/me/export",
];

fn error_responses(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        out.insert(
            (*code).to_owned(),
            json!({
                "description": match *code {
                    "400" => "The request is malformed.",
                    "403" => "The label withheld the track (taken_down, embargoed).",
                    "404" => "No such resource.",
                    "409" => "A conflict: the track is not ready (track_not_ready, track_failed), or the account exists.",
                    "401" => "Missing or wrong credentials (unauthorized, invalid_client).",
                    "429" => "Too many requests from this client; see Retry-After.",
                    "451" => "Not licensed where the listener is, or not now (licence_ended, not_yet_licensed, not_licensed).",
                    _ => "An error.",
                },
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            }),
        );
    }
    Value::Object(out)
}

fn id_param(what: &str) -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "description": format!("The {what} id: 24 lowercase hexadecimal digits."),
        "schema": {"type": "string", "pattern": "^[0-9a-f]{24}$"}
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// The document.
pub fn spec() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Cadenza control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Playback grants, the catalogue and search. Errors are JSON objects {\"error\": code, \"message\": text}."
        },
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An access token from /oauth/token."}}
        }
    })
}

fn paths() -> Value {
    merge(paths_catalogue(), paths_accounts())
}

fn paths_accounts() -> Value {
    let bearer = json!([{"bearer": []}]);
    json!({
        "/v1/accounts": {"post": {
            "summary": "Sign up",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["email", "password"],
                "properties": {"email": {"type": "string"}, "password": {"type": "string", "minLength": 8, "maxLength": 256}}
            }}}},
            "responses": merge(json!({"201": {"description": "The account.", "content": {"application/json": {"schema": {
                "type": "object", "required": ["user_id"], "properties": {"user_id": {"type": "string"}}
            }}}}}), error_responses(&["400", "409", "429"]))
        }},
        "/oauth/token": {"post": {
            "summary": "OAuth 2.0 tokens (RFC 6749)",
            "description": "grant_type=password (first-party apps: username, password, client_id), refresh_token (first-party apps: refresh_token, client_id; each refresh token works once), client_credentials (services: client_id, client_secret). Rate limited per client.",
            "requestBody": {"required": true, "content": {
                "application/x-www-form-urlencoded": {"schema": {"$ref": "#/components/schemas/TokenRequest"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}
            }},
            "responses": merge(json!({"200": {"description": "Tokens.", "content": {"application/json": {"schema": {
                "type": "object", "required": ["access_token", "token_type", "expires_in"],
                "properties": {"access_token": {"type": "string"}, "token_type": {"const": "Bearer"}, "expires_in": {"type": "integer"}, "refresh_token": {"type": "string"}}
            }}}}}), error_responses(&["400", "401", "429"]))
        }},
        "/v1/me": {"delete": {
            "summary": "Delete the caller's account and sessions",
            "security": bearer,
            "responses": merge(json!({"204": {"description": "Deleted."}}), error_responses(&["401", "404"]))
        }},
        "/v1/me/export": {"get": {
            "summary": "Everything stored about the caller",
            "security": bearer,
            "responses": merge(json!({"200": {"description": "The export.", "content": {"application/json": {"schema": {"type": "object"}}}}}), error_responses(&["401", "404"]))
        }}
    })
}

fn paths_catalogue() -> Value {
    json!({
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Alive."}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "The OpenAPI description.", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/v1/playback": {"post": {
            "summary": "A grant to play a track",
            "description": "For a signed-in listener (a user's access token from the password or refresh-token grant). Rights are decided from the primary store at the moment of the request: takedown, release embargo, and the licence windows for the listener's country (from the client address). The token names only the territories licensed now and expires no later than the right.",
            "security": [{"bearer": []}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PlaybackRequest"}}}},
            "responses": merge(json!({"200": ok("The grant.", "PlaybackGrant")}), error_responses(&["400", "401", "403", "404", "409", "451"]))
        }},
        "/v1/search": {"get": {
            "summary": "Tracks, albums and artists, typo-tolerant, best first",
            "description": "One typo is allowed from 5 characters, two from 9; the last word is a prefix. Ranked by typos, then all words in the title, then plays. Only tracks playable in the listener's country are returned.",
            "parameters": [
                {"name": "q", "in": "query", "required": true, "schema": {"type": "string", "maxLength": 200}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0}}
            ],
            "responses": merge(json!({"200": ok("Hits, best first.", "SearchResults")}), error_responses(&["400"]))
        }},
        "/v1/tracks/{id}": {"get": {
            "summary": "A track: status, licences and renditions (no keys)",
            "parameters": [id_param("track")],
            "responses": merge(json!({"200": ok("The track.", "Track")}), error_responses(&["400", "404"]))
        }},
        "/v1/albums/{id}": {"get": {
            "summary": "An album and its playable tracks in album order",
            "parameters": [id_param("album")],
            "responses": merge(json!({"200": ok("The album.", "Album")}), error_responses(&["400", "404"]))
        }},
        "/v1/artists/{id}": {"get": {
            "summary": "An artist, their albums and a page of their playable tracks, newest first",
            "parameters": [id_param("artist"),
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
                {"name": "cursor", "in": "query", "description": "next_cursor of the previous page.", "schema": {"type": "string"}}],
            "responses": merge(json!({"200": ok("The artist.", "Artist")}), error_responses(&["400", "404"]))
        }},
        "/v1/edge-keys": {"get": {
            "summary": "Public keys that sign edge tokens",
            "responses": {"200": {"description": "Ed25519 public keys by key id.", "content": {"application/json": {"schema": {
                "type": "object", "required": ["keys"],
                "properties": {"keys": {"type": "array", "items": {"type": "object", "required": ["kid", "alg", "public_key"], "properties": {
                    "kid": {"type": "string"}, "alg": {"const": "Ed25519"}, "public_key": {"type": "string", "contentEncoding": "base64"}
                }}}}
            }}}}}
        }}
    })
}

fn schemas() -> Value {
    let nullable = |t: &str| json!({"type": [t, "null"]});
    merge(
        schemas_grants(),
        json!({
            "Licence": {"type": "object", "required": ["territories"], "properties": {
                "territories": {"type": "string", "description": "GB,SE,US; WW; or WW,-CN."},
                "starts_at": {"type": "integer"}, "ends_at": {"type": "integer"}
            }},
            "Track": {"type": "object", "required": ["track_id", "title", "artist", "territories", "status", "renditions"], "properties": {
                "track_id": {"type": "string"}, "title": {"type": "string"}, "artist": {"type": "string"},
                "artist_id": nullable("string"), "album_id": nullable("string"), "album": nullable("string"),
                "featuring": {"type": "array", "items": {"type": "string"}},
                "isrc": nullable("string"), "track_number": nullable("integer"), "release_at": nullable("integer"),
                "label_id": nullable("string"), "taken_down_at": nullable("integer"),
                "territories": {"type": "string"},
                "licences": {"type": "array", "items": {"$ref": "#/components/schemas/Licence"}},
                "status": {"type": "string", "enum": ["received", "transcoding", "ready", "failed"]},
                "failure": nullable("string"), "duration_ms": nullable("integer"),
                "renditions": {"type": "array", "items": {"type": "object", "required": ["quality", "file_id", "size", "bitrate_kbps"], "properties": {
                    "quality": {"$ref": "#/components/schemas/Quality"}, "file_id": {"type": "string"}, "size": {"type": "integer"}, "bitrate_kbps": {"type": "integer"}
                }}},
                "loudness": {"oneOf": [{"$ref": "#/components/schemas/Loudness"}, {"type": "null"}]},
                "features": {"type": ["object", "null"]}
            }},
            "TrackSummary": {"type": "object", "required": ["track_id", "title", "artist"], "properties": {
                "track_id": {"type": "string"}, "title": {"type": "string"}, "artist": {"type": "string"},
                "track_number": nullable("integer"), "duration_ms": nullable("integer")
            }},
            "Album": {"type": "object", "required": ["album_id", "title", "artist_id", "artist", "tracks"], "properties": {
                "album_id": {"type": "string"}, "title": {"type": "string"}, "artist_id": {"type": "string"}, "artist": {"type": "string"},
                "label_id": nullable("string"), "release_at": nullable("integer"),
                "tracks": {"type": "array", "items": {"$ref": "#/components/schemas/TrackSummary"}}
            }},
            "Artist": {"type": "object", "required": ["artist_id", "name", "albums", "tracks"], "properties": {
                "artist_id": {"type": "string"}, "name": {"type": "string"},
                "albums": {"type": "array", "items": {"type": "object", "required": ["album_id", "title"], "properties": {
                    "album_id": {"type": "string"}, "title": {"type": "string"}, "release_at": nullable("integer")
                }}},
                "tracks": {"type": "array", "items": {"$ref": "#/components/schemas/TrackSummary"}},
                "next_cursor": {"type": "string", "description": "Pass as cursor for the next page; absent on the last."}
            }},
            "Hit": {"type": "object", "required": ["kind", "id", "title", "popularity"], "properties": {
                "kind": {"type": "string", "enum": ["track", "album", "artist"]},
                "id": {"type": "string"}, "title": {"type": "string"},
                "artist": {"type": "string"}, "album": {"type": "string"}, "popularity": {"type": "integer"}
            }},
            "SearchResults": {"type": "object", "required": ["hits", "estimated_total", "offset", "limit"], "properties": {
                "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                "estimated_total": {"type": "integer", "description": "Documents matching the words before the territory filter: an upper bound."},
                "offset": {"type": "integer"}, "limit": {"type": "integer"}
            }}
        }),
    )
}

fn schemas_grants() -> Value {
    json!({
        "TokenRequest": {"type": "object", "required": ["grant_type", "client_id"], "properties": {
            "grant_type": {"type": "string", "enum": ["password", "refresh_token", "client_credentials"]},
            "client_id": {"type": "string"}, "client_secret": {"type": "string"},
            "username": {"type": "string"}, "password": {"type": "string"}, "refresh_token": {"type": "string"}
        }},
        "Error": {"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string", "description": "A stable machine-readable code."},
            "message": {"type": "string"}
        }},
        "Quality": {"type": "string", "enum": ["low", "normal", "high"], "description": "96, 160 or 320 kbps."},
        "PlaybackRequest": {"type": "object", "required": ["track_id"], "properties": {
            "track_id": {"type": "string"},
            "quality": {"$ref": "#/components/schemas/Quality", "description": "Wanted tier; the best below it, else the lowest above it, is served."}
        }},
        "Loudness": {"type": "object", "required": ["integrated_lufs", "true_peak_dbtp", "track_gain_db"], "properties": {
            "integrated_lufs": {"type": "number"}, "true_peak_dbtp": {"type": "number"}, "track_gain_db": {"type": "number"}
        }},
        "SeekIndex": {"type": "object", "required": ["header_bytes", "frames", "points"], "properties": {
            "header_bytes": {"type": "integer"}, "frames": {"type": "integer"},
            "points": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}, "description": "[frame, byte offset] pairs."}
        }},
        "PlaybackGrant": {"type": "object", "required": ["track_id", "quality", "file_id", "size", "format", "bitrate_kbps", "duration_ms", "key", "edges", "token", "expires_at", "seek_index"], "properties": {
            "track_id": {"type": "string"}, "quality": {"$ref": "#/components/schemas/Quality"},
            "file_id": {"type": "string"}, "size": {"type": "integer"}, "format": {"const": "ogg/vorbis"},
            "bitrate_kbps": {"type": "integer"}, "duration_ms": {"type": "integer"},
            "key": {"type": "object", "required": ["key", "iv"], "properties": {"key": {"type": "string"}, "iv": {"type": "string"}}, "description": "AES-128-CTR key and initial counter, hex."},
            "edges": {"type": "array", "items": {"type": "string"}, "description": "Edge base URLs, best first; the file is at {edge}/a/{file_id}."},
            "token": {"type": "string", "description": "Bearer token for the edges."},
            "expires_at": {"type": "integer", "description": "Seconds since the epoch."},
            "seek_index": {"$ref": "#/components/schemas/SeekIndex"},
            "loudness": {"oneOf": [{"$ref": "#/components/schemas/Loudness"}, {"type": "null"}]}
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_path_is_described_and_only_those() {
        let spec = spec();
        let paths = spec["paths"].as_object().expect("paths");
        let mut described: Vec<&str> = paths.keys().map(String::as_str).collect();
        described.sort_unstable();
        let mut public = PUBLIC_PATHS.to_vec();
        public.sort_unstable();
        assert_eq!(described, public);
        // Every $ref points at a schema that exists.
        let text = spec.to_string();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').expect("closing quote")];
            assert!(spec["components"]["schemas"][name].is_object(), "{name}");
        }
    }
}
