//! Tests of the tape: it validates exactly as `serde_json::Value` does, parses what serde_json
//! parses (and nothing else), and skips only what no schema can read.
//! Must not: depend on a plan's policies; only the last test loads a plan, for its `need`.

use jsonschema::{Draft, ValidationError};
use serde_json::{json, Value};

use super::*;
use crate::validate::tape::{self, Need, Tape};

// ---- the tape -----------------------------------------------------------------------------

/// The tape must judge exactly as `serde_json::Value` does: every schema × instance pair
/// gives the same validity and the same errors (place, keyword, message).
#[test]
fn tape_validates_exactly_like_serde_json() {
    let schemas = [
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": ["string", "null"]}}, "required": ["a"], "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "number", "multipleOf": 0.5, "maximum": 10}, "minItems": 1, "maxItems": 3, "uniqueItems": true}),
        json!({"enum": [1, "a", null, true, [1, 2], {"k": 1.0}]}),
        json!({"const": {"a": [1, 2.0]}}),
        json!({"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-zé]+$"}),
        json!({"type": "string", "format": "date-time"}),
        json!({"propertyNames": {"maxLength": 3}, "minProperties": 1, "maxProperties": 2, "patternProperties": {"^x": {"type": "boolean"}}}),
        json!({"anyOf": [{"type": "integer"}, {"type": "string"}], "not": {"const": 0}}),
        json!({"oneOf": [{"minimum": 5}, {"multipleOf": 2}]}),
        json!({"if": {"properties": {"k": {"const": "a"}}}, "then": {"required": ["a"]}, "else": {"required": ["b"]}}),
        json!({"type": "object", "dependencies": {"a": ["b"]}, "properties": {"n": {"$ref": "#/definitions/n"}}, "definitions": {"n": {"type": "integer", "exclusiveMinimum": 0}}}),
        json!({"contains": {"type": "string"}, "items": [{"type": "integer"}], "additionalItems": {"type": "string"}}),
    ];
    let instances = [
        r#"{"a":1}"#,
        r#"{"a":1.0,"b":null}"#,
        r#"{"a":1.5,"c":2}"#,
        r#"{"b":"x"}"#,
        r#"{}"#,
        r#"{"x1":true,"x2":"no"}"#,
        r#"{"longname":1}"#,
        r#"{"k":"a"}"#,
        r#"{"k":"b","b":1}"#,
        r#"{"a":1,"b":2}"#,
        r#"{"n":0}"#,
        r#"{"n":3}"#,
        r#"[]"#,
        r#"[1,2]"#,
        r#"[1,1]"#,
        r#"[0.5,1.5,2,3]"#,
        r#"[11]"#,
        r#"[1,"a","b"]"#,
        r#"[1,2,3]"#,
        r#"[1,2.0]"#,
        r#"1"#,
        r#"1.0"#,
        r#"0"#,
        r#"-0"#,
        r#"4"#,
        r#"6"#,
        r#"2.5"#,
        r#"1e2"#,
        r#"1E-2"#,
        r#"12345678901234567890"#,
        r#"-9223372036854775808"#,
        r#""a""#,
        r#""abé""#,
        r#""ab1""#,
        r#""abcde""#,
        r#""a\u00e9""#,
        r#""2025-03-15T14:30:00Z""#,
        r#""yesterday""#,
        r#"null"#,
        r#"true"#,
        r#"false"#,
        r#"{"k":1.0}"#,
        r#"{"a":[1,2]}"#,
        r#"{"a":[1.0,2]}"#,
        r#"[1,2.0]"#,
    ];
    let mut compared = 0;
    for schema in &schemas {
        let reference = jsonschema::options().with_draft(Draft::Draft7).build(schema).unwrap();
        let ours = jsonschema::options_for::<Tape>().with_draft(Draft::Draft7).build(schema).unwrap();
        for text in instances {
            let value: Value = serde_json::from_str(text).unwrap();
            let doc = tape::parse(text, &Need::All).unwrap();
            let node = doc.node(0);
            let describe = |e: ValidationError<'_>| {
                (e.instance_path().as_str().to_owned(), e.kind().keyword().to_owned(), e.to_string())
            };
            let want: Vec<_> = reference.iter_errors(&value).map(describe).collect();
            let got: Vec<_> = ours.iter_errors(node).map(describe).collect();
            assert_eq!(got, want, "schema {schema} instance {text}");
            assert_eq!(ours.is_valid(node), reference.is_valid(&value), "schema {schema} instance {text}");
            compared += 1;
        }
    }
    assert_eq!(compared, schemas.len() * instances.len());
}

#[test]
fn tape_parses_what_serde_json_parses_and_refuses_the_rest() {
    let good = [
        r#"{"a":[1,-2.5e+3,0,true,false,null,"x\"y\\z\u0041\n",{}],"":[],"é":{"b":{"c":[[]]}}}"#,
        " \n\t{ \"a\" : 1 } \r\n",
        "\"just a string\"",
        "-0.0e-0",
    ];
    for text in good {
        let doc = tape::parse(text, &Need::All).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        let via_tape = jsonschema::json::Node::to_value(&doc.node(0)).into_owned();
        assert_eq!(via_tape, serde_json::from_str::<Value>(text).unwrap(), "{text}");
    }
    let bad = [
        "",
        " ",
        "{",
        "}",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{a:1}",
        "[01]",
        "[1.]",
        "[.5]",
        "[1e]",
        "[-]",
        "[+1]",
        "\"\\x\"",
        "\"\\u12\"",
        "\"a\u{1}b\"",
        "\"unterminated",
        "tru",
        "nul",
        "[1] [2]",
        "{\"a\":1}x",
        "[\"\\\"]",
    ];
    for text in bad {
        assert!(tape::parse(text, &Need::All).is_err(), "accepted {text:?}");
        assert!(serde_json::from_str::<Value>(text).is_err(), "the test itself is wrong about {text:?}");
    }
    // The word-at-a-time scan must stop exactly at the first quote, backslash or control
    // character wherever it falls in the 8-byte word, with multi-byte UTF-8 around it.
    for len in 0..20 {
        for filler in ["a", "é", "\u{7f}", "€"] {
            let body = filler.repeat(len);
            for (text, expected) in [
                (format!("[\"{body}\",\"{body}\"]"), Some(json!([body, body]))),
                (format!("[\"{body}\\\"{body}\"]"), Some(json!([format!("{body}\"{body}")]))),
                (format!("[\"{body}\\\\\"]"), Some(json!([format!("{body}\\")]))),
                (format!("[\"{body}\u{1f}{body}\"]"), None),
                (format!("[\"{body}\n\"]"), None),
            ] {
                let parsed = tape::parse(&text, &Need::All)
                    .ok()
                    .map(|d| jsonschema::json::Node::to_value(&d.node(0)).into_owned());
                assert_eq!(parsed, expected, "{text:?}");
            }
        }
    }
    // Numbers read through the fast path equal the standard library's reading.
    for text in [
        "0",
        "-0",
        "29.99",
        "9.99",
        "0.1",
        "0.30000000000000004",
        "123456789012345",
        "1234567890.12345",
        "-7.5",
        "1e3",
        "1.5e-7",
        "12345678901234567",
        "0.000000000000000000000001",
    ] {
        let doc = tape::parse(text, &Need::All).unwrap();
        let n = jsonschema::json::Node::as_number(&doc.node(0)).unwrap();
        assert_eq!(jsonschema::json::JsonNumber::as_f64(&n), text.parse::<f64>().ok(), "{text}");
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(tape::parse(&deep, &Need::All).is_err());
    let ok_depth = format!("{}{}", "[".repeat(100), "]".repeat(100));
    assert!(tape::parse(&ok_depth, &Need::All).is_ok());
}

/// What a schema lets the parser skip: object structure (`type`/`properties`/`required`)
/// projects, anything dynamic needs the whole value.
#[test]
fn schema_analysis_keeps_what_validation_can_see() {
    let need = Need::of_schema(&json!({
        "$schema": "http://json-schema.org/draft-07/schema#", "title": "t", "type": "object",
        "properties": {
            "context": {"type": "object", "properties": {"library": {"properties": {"name": {"type": "string"}}}}},
            "userId": {"type": "string", "minLength": 1},
            "integrations": true
        },
        "required": ["context", "anonymousId"],
        "additionalProperties": true
    }));
    // `{"type": "string"}` reads no member (were the value an object, its type is all that
    // matters); `minLength` is not structural, so `userId` is read whole.
    let expected = Need::path(&["userId"])
        .merge(Need::nested(&["context", "library", "name"], Need::none()))
        .merge(Need::nested(&["integrations"], Need::none()))
        .merge(Need::nested(&["anonymousId"], Need::none()));
    assert_eq!(need, expected);
    for dynamic in [
        json!({"$ref": "#/definitions/x"}),
        json!({"allOf": [{}]}),
        json!({"additionalProperties": false}),
        json!({"patternProperties": {"^x": {}}}),
        json!({"minProperties": 1}),
        json!({"if": {}, "then": {}}),
        json!({"required": [1]}),
        json!(12),
    ] {
        assert_eq!(Need::of_schema(&dynamic), Need::All, "{dynamic}");
    }
    // Nested dynamics stay local: only that member is parsed whole.
    let need = Need::of_schema(&json!({"properties": {"a": {"anyOf": [{}]}, "b": {"properties": {"c": {}}}}}));
    assert_eq!(need, Need::path(&["a"]).merge(Need::nested(&["b", "c"], Need::none())));
}

/// Validating the projected event gives exactly what validating all of it gives, and the
/// skipped members (with brackets, quotes and escapes inside strings) are skipped right.
#[test]
fn projected_parse_validates_like_the_whole_event() {
    let common = json!({"type": "object", "required": ["context"], "properties": {
        "userId": {"type": "string"},
        "context": {"type": "object", "required": ["library"], "properties": {"library": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 2}, "version": {"type": "string"}}}}}
    }});
    let need = Need::of_schema(&common);
    let validator = jsonschema::options_for::<Tape>().with_draft(Draft::Draft7).build(&common).unwrap();
    let events = [
        r#"{"messageId":"a}\"]{[","userId":"u","context":{"page":{"x":["}",{"y":"\"["}]},"library":{"name":"js","v":[1,{"a":"]"}]}},"n":-1.5e3,"t":true,"z":null}"#,
        r#"{"userId":7,"context":{"library":{"name":"j"}}}"#,
        r#"{"context":{"library":"x"}}"#,
        r#"{"context":{"library":{"name":{"deep":[1,{"x":"y"}]},"version":{"a":[1,{"b":"c"}],"d":2}}}}"#,
        r#"{"context":[]}"#,
        r#"{"context":{"library":{}},"extra":{"context":{"library":{"name":1}}}}"#,
        r#"{"userId":5,"context":{"li\/brary":1,"library":{"name":"ok"}}}"#,
        r#"{ "userId" : "u" , "context" : { "library" : { "name" : "ok" } } , "x" : [ 1 , 2 ] }"#,
        r#"{}"#,
        r#"[]"#,
    ];
    let describe = |e: ValidationError<'_>| (e.instance_path().as_str().to_owned(), e.to_string());
    for text in events {
        let full = tape::parse(text, &Need::All).unwrap();
        let projected = tape::parse(text, &need).unwrap();
        let want: Vec<_> = validator.iter_errors(full.node(0)).map(describe).collect();
        let got: Vec<_> = validator.iter_errors(projected.node(0)).map(describe).collect();
        assert_eq!(got, want, "{text}");
    }
    // The projection really skips: nothing of `page` or `messageId` is recorded.
    let doc = tape::parse(events[0], &need).unwrap();
    assert!(doc.get(0, "messageId").is_none());
    let context = doc.get(0, "context").unwrap();
    assert!(doc.get(context, "page").is_none());
    assert!(doc.get(context, "library").is_some());
    // Skipping still needs balanced brackets and closed strings.
    for broken in [r#"{"a":{"b":"}"#, r#"{"a":"x"#, r#"{"a":[1,2"#, r#"{"a":}"#] {
        assert!(tape::parse(broken, &need).is_err(), "{broken}");
    }
}

#[test]
fn the_plan_parses_only_what_its_schemas_read() {
    // The shop plan reads type/event/properties/traits, its common schema's
    // context.library.name, and context.protocols.event_version (it has versions).
    let plan = shop();
    let expected = Need::path(&["type"])
        .merge(Need::path(&["event"]))
        .merge(Need::path(&["properties"]))
        .merge(Need::path(&["traits"]))
        .merge(Need::path(&["context", "protocols", "event_version"]))
        .merge(Need::nested(&["context", "library", "name"], Need::none()));
    assert_eq!(plan.need, expected);
}
