use super::*;
use std::path::PathBuf;
use std::time::Duration;

fn parse(text: &str) -> Map {
    parse_str(text).unwrap_or_else(|e| panic!("parse failed: {e}\n--- input ---\n{text}"))
}

fn err(text: &str) -> ConfigError {
    match parse_str(text) {
        Ok(m) => panic!("expected an error, got {m:?}\n--- input ---\n{text}"),
        Err(e) => e,
    }
}

fn kind<'a>(m: &'a Map, key: &str) -> &'a ValueKind {
    &m.get(key)
        .unwrap_or_else(|| panic!("missing key {key} in {m:?}"))
        .kind
}

fn s(v: &str) -> ValueKind {
    ValueKind::String(v.to_string())
}

fn int(i: i64) -> ValueKind {
    ValueKind::Integer(i)
}

fn kinds(v: &Value) -> Vec<ValueKind> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v.kind.clone())
        .collect()
}

/// A fresh directory under the system temp dir for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-config-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn key_value_separators() {
    let m = parse("a: 1\nb = 2\nc 3\nd:4\ne=5\nf\t6\n  g   :   7  \n");
    for (k, v) in [
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("d", 4),
        ("e", 5),
        ("f", 6),
        ("g", 7),
    ] {
        assert_eq!(kind(&m, k), &int(v), "key {k}");
    }
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        ["a", "b", "c", "d", "e", "f", "g"]
    );
}

#[test]
fn value_terminators_semicolons_and_commas() {
    let m = parse("a: 1; b: two, c = \"3\";\nd: x // trailing\n");
    assert_eq!(kind(&m, "a"), &int(1));
    assert_eq!(kind(&m, "b"), &s("two"));
    assert_eq!(kind(&m, "c"), &s("3"));
    assert_eq!(kind(&m, "d"), &s("x"));
}

#[test]
fn key_on_one_line_value_on_next_without_separator() {
    // nats-server skips new lines between a key and a value when there is no separator.
    let m = parse("port\n4222\n");
    assert_eq!(kind(&m, "port"), &int(4222));
}

#[test]
fn quoted_keys() {
    let m = parse("\"my key\": 1\n'other: key' = 2\nmap { \"a b\": 3, 'c': 4 }");
    assert_eq!(kind(&m, "my key"), &int(1));
    assert_eq!(kind(&m, "other: key"), &int(2));
    let inner = m.get("map").unwrap().as_map().unwrap();
    assert_eq!(kind(inner, "a b"), &int(3));
    assert_eq!(kind(inner, "c"), &int(4));
}

#[test]
fn blocks_and_nested_blocks() {
    let m = parse(
        "a { x: 1 }\n\
         b: { y: 2 }\n\
         c = { z: 3 }\n\
         d {\n  e {\n    f: { g: deep }\n  }\n  h: [1, 2]\n}\n\
         empty {}\n",
    );
    assert_eq!(kind(m.get("a").unwrap().as_map().unwrap(), "x"), &int(1));
    assert_eq!(kind(m.get("b").unwrap().as_map().unwrap(), "y"), &int(2));
    assert_eq!(kind(m.get("c").unwrap().as_map().unwrap(), "z"), &int(3));
    let d = m.get("d").unwrap().as_map().unwrap();
    let g = d
        .get("e")
        .unwrap()
        .as_map()
        .unwrap()
        .get("f")
        .unwrap()
        .as_map()
        .unwrap();
    assert_eq!(kind(g, "g"), &s("deep"));
    assert_eq!(kinds(d.get("h").unwrap()), vec![int(1), int(2)]);
    assert!(m.get("empty").unwrap().as_map().unwrap().is_empty());
}

#[test]
fn map_entries_separated_by_newlines_commas_semicolons() {
    let m = parse("m {\n  a: 1\n  b: 2, c: 3; d: 4\n  e:\n    5\n}\n");
    let inner = m.get("m").unwrap().as_map().unwrap();
    for (k, v) in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)] {
        assert_eq!(kind(inner, k), &int(v));
    }
    // Trailing comma before '}'.
    let m = parse("m { a: 1, b: 2, }");
    assert_eq!(m.get("m").unwrap().as_map().unwrap().len(), 2);
}

#[test]
fn arrays() {
    let m = parse(
        "a: [1, 2, 3, 'bar']\n\
         b = [1,2,3,\"x\"]\n\
         c: [\n  1, # one\n  2, // two\n  3 # three\n  four\n  'five'     ,\n]\n\
         d: []\n\
         e: [[1, 2], [x], {k: v}]\n\
         f: [nats://a:6222, nats://b:6222]\n",
    );
    assert_eq!(
        kinds(m.get("a").unwrap()),
        vec![int(1), int(2), int(3), s("bar")]
    );
    assert_eq!(
        kinds(m.get("b").unwrap()),
        vec![int(1), int(2), int(3), s("x")]
    );
    assert_eq!(
        kinds(m.get("c").unwrap()),
        vec![int(1), int(2), int(3), s("four"), s("five")]
    );
    assert!(m.get("d").unwrap().as_array().unwrap().is_empty());
    let e = m.get("e").unwrap().as_array().unwrap();
    assert_eq!(kinds(&e[0]), vec![int(1), int(2)]);
    assert_eq!(kinds(&e[1]), vec![s("x")]);
    assert_eq!(kind(e[2].as_map().unwrap(), "k"), &s("v"));
    assert_eq!(
        kinds(m.get("f").unwrap()),
        vec![s("nats://a:6222"), s("nats://b:6222")]
    );
}

#[test]
fn array_of_maps() {
    let m = parse(
        "users = [\n  {user: alice, password: a1}\n  {user: bob, password: \"b2\", permissions: {publish: [\"x.>\"]}}\n]\n",
    );
    let users = m.get("users").unwrap().as_array().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(kind(users[0].as_map().unwrap(), "user"), &s("alice"));
    let perms = users[1]
        .as_map()
        .unwrap()
        .get("permissions")
        .unwrap()
        .as_map()
        .unwrap();
    assert_eq!(kinds(perms.get("publish").unwrap()), vec![s("x.>")]);
}

#[test]
fn comments() {
    let m = parse(
        "# leading comment\n// another\na: 1 # after\nb: 2 // after\nc: foo#bar\nd: nats://h:1\n\
         m {\n  # inside\n  x: 1 // after\n  // before end\n}\n# trailing",
    );
    assert_eq!(kind(&m, "a"), &int(1));
    assert_eq!(kind(&m, "b"), &int(2));
    // '#' does not start a comment inside an unquoted word (as in nats-server).
    assert_eq!(kind(&m, "c"), &s("foo#bar"));
    assert_eq!(kind(&m, "d"), &s("nats://h:1"));
    assert_eq!(kind(m.get("m").unwrap().as_map().unwrap(), "x"), &int(1));
    assert_eq!(m.len(), 5);
}

#[test]
fn empty_and_comment_only_inputs() {
    assert!(parse("").is_empty());
    assert!(parse("\n\n   \n").is_empty());
    assert!(parse("# just a comment\n// and another\n").is_empty());
    assert!(parse("{}").is_empty());
}

#[test]
fn strings() {
    let m = parse(concat!(
        "a: unquoted\n",
        "b: \"double \\\"quoted\\\" \\t\\n\\r\\\\ \\x41\\x42\"\n",
        "c: 'single \\n raw'\n",
        "d: \"\"\n",
        "e: ''\n",
        "f: \"true\"\n",
        "g: '$NOT_A_VAR'\n",
        "h: \"multi\nline\"\n",
        "i: a\\tb\n",
        "j: \"caf\\xc3\\xa9\"\n",
        "k: \"unicode ✓\"\n",
        "l: \"./relative/path.conf\"\n",
    ));
    assert_eq!(kind(&m, "a"), &s("unquoted"));
    assert_eq!(kind(&m, "b"), &s("double \"quoted\" \t\n\r\\ AB"));
    assert_eq!(kind(&m, "c"), &s("single \\n raw"));
    assert_eq!(kind(&m, "d"), &s(""));
    assert_eq!(kind(&m, "e"), &s(""));
    assert_eq!(kind(&m, "f"), &s("true"));
    assert_eq!(kind(&m, "g"), &s("$NOT_A_VAR"));
    assert_eq!(kind(&m, "h"), &s("multi\nline"));
    // Escapes are processed in unquoted strings too.
    assert_eq!(kind(&m, "i"), &s("a\tb"));
    assert_eq!(kind(&m, "j"), &s("café"));
    assert_eq!(kind(&m, "k"), &s("unicode ✓"));
    assert_eq!(kind(&m, "l"), &s("./relative/path.conf"));
}

#[test]
fn block_strings() {
    let m = parse("text (\n  line one\n  line (two)\n)\nafter: 1\n");
    assert_eq!(kind(&m, "text"), &s("\n  line one\n  line (two)\n"));
    assert_eq!(kind(&m, "after"), &int(1));
    let m = parse("text (\nx\n)");
    assert_eq!(kind(&m, "text"), &s("\nx\n"));
}

#[test]
fn integers_floats_and_size_suffixes() {
    let m = parse(concat!(
        "a: 42\nb: -17\nc: 0\nd: 1.5\ne: -0.25\n",
        "k1: 1k\nk2: 1K\nk3: 1kb\nk4: 1KB\nk5: 1ki\nk6: 1KiB\nk7: 64KB\n",
        "m1: 1m\nm2: 1MB\nm3: 1mib\nm4: 2Mi\n",
        "g1: 1g\ng2: 1GB\ng3: 1Gi\n",
        "t1: 1t\nt2: 1tb\np1: 1p\np2: 1pb\ne1: 1e\ne2: 1eb\n",
        "neg: -2k\n",
    ));
    assert_eq!(kind(&m, "a"), &int(42));
    assert_eq!(kind(&m, "b"), &int(-17));
    assert_eq!(kind(&m, "c"), &int(0));
    assert_eq!(kind(&m, "d"), &ValueKind::Float(1.5));
    assert_eq!(kind(&m, "e"), &ValueKind::Float(-0.25));
    for (k, v) in [
        ("k1", 1000),
        ("k2", 1000),
        ("k3", 1024),
        ("k4", 1024),
        ("k5", 1024),
        ("k6", 1024),
        ("k7", 64 * 1024),
        ("m1", 1_000_000),
        ("m2", 1 << 20),
        ("m3", 1 << 20),
        ("m4", 2 << 20),
        ("g1", 1_000_000_000),
        ("g2", 1 << 30),
        ("g3", 1 << 30),
        ("t1", 1_000_000_000_000),
        ("t2", 1 << 40),
        ("p1", 1_000_000_000_000_000),
        ("p2", 1 << 50),
        ("e1", 1_000_000_000_000_000_000),
        ("e2", 1 << 60),
        ("neg", -2000),
    ] {
        assert_eq!(kind(&m, k), &int(v), "key {k}");
    }
}

#[test]
fn words_starting_with_digits() {
    let m = parse(concat!(
        "a: 10s\nb: 1h30m\nc: 500ms\nd: 3xyz\ne: 1k5\nf: 4222#x\n",
        // Unquoted `2m` is a sized integer in nats-server (2,000,000), not a duration.
        "g: 2m\n",
        "h: 0.0.0.0:6222\ni: 127.0.0.1\nj: 1example.com:4222\n",
        "k: 2016-05-04T18:53:41Z\n",
    ));
    assert_eq!(kind(&m, "a"), &s("10s"));
    assert_eq!(kind(&m, "b"), &s("1h30m"));
    assert_eq!(kind(&m, "c"), &s("500ms"));
    assert_eq!(kind(&m, "d"), &s("3xyz"));
    assert_eq!(kind(&m, "e"), &s("1k5"));
    assert_eq!(kind(&m, "f"), &s("4222#x"));
    assert_eq!(kind(&m, "g"), &int(2_000_000));
    assert_eq!(kind(&m, "h"), &s("0.0.0.0:6222"));
    assert_eq!(kind(&m, "i"), &s("127.0.0.1"));
    assert_eq!(kind(&m, "j"), &s("1example.com:4222"));
    assert_eq!(kind(&m, "k"), &s("2016-05-04T18:53:41Z"));
}

#[test]
fn booleans() {
    let m = parse("a: true\nb: FALSE\nc: yes\nd: No\ne: on\nf: OFF\ng: \"yes\"\nh: yesno\n");
    for (k, v) in [
        ("a", true),
        ("b", false),
        ("c", true),
        ("d", false),
        ("e", true),
        ("f", false),
    ] {
        assert_eq!(kind(&m, k), &ValueKind::Bool(v), "key {k}");
        assert_eq!(m.get(k).unwrap().as_bool().unwrap(), v);
    }
    assert_eq!(kind(&m, "g"), &s("yes"));
    assert_eq!(kind(&m, "h"), &s("yesno"));
}

#[test]
fn variables_same_and_enclosing_levels() {
    let m = parse(
        "port_base: 4222\n\
         name = \"srv\"\n\
         port: $port_base\n\
         cluster {\n  inner: 7\n  port: $port_base\n  x: $inner\n  list: [$name, $inner]\n  nested { y: $inner }\n}\n",
    );
    assert_eq!(kind(&m, "port"), &int(4222));
    let c = m.get("cluster").unwrap().as_map().unwrap();
    assert_eq!(kind(c, "port"), &int(4222));
    assert_eq!(kind(c, "x"), &int(7));
    assert_eq!(kinds(c.get("list").unwrap()), vec![s("srv"), int(7)]);
    assert_eq!(
        kind(c.get("nested").unwrap().as_map().unwrap(), "y"),
        &int(7)
    );
    // Variable definitions are marked so the option mapping can skip them.
    assert!(m.entry("port_base").unwrap().used_as_variable);
    assert!(m.entry("name").unwrap().used_as_variable);
    assert!(!m.entry("port").unwrap().used_as_variable);
    assert!(c.entry("inner").unwrap().used_as_variable);
    // The value's position is where the reference was written.
    let p = &m.get("port").unwrap().pos;
    assert_eq!((p.line, p.column), (3, 7));
}

#[test]
fn variables_inner_definitions_shadow_outer_ones() {
    let m = parse("index = 22\nnest {\n  index = 11\n  foo = $index\n}\nbar = $index\n");
    assert_eq!(
        kind(m.get("nest").unwrap().as_map().unwrap(), "foo"),
        &int(11)
    );
    assert_eq!(kind(&m, "bar"), &int(22));
}

#[test]
fn key_followed_directly_by_array_or_map() {
    let m = parse("array [\n  { abc: 123 }\n  { xyz: \"word\" }\n]\nmap{a:1}\n");
    let a = m.get("array").unwrap().as_array().unwrap();
    assert_eq!(kind(a[0].as_map().unwrap(), "abc"), &int(123));
    assert_eq!(kind(a[1].as_map().unwrap(), "xyz"), &s("word"));
    // Keys run up to whitespace or a separator, as in nats-server, so
    // `map{a:1}` defines the odd key "map{a" (later reported as unknown).
    let m = parse("map{a:1}\n");
    assert_eq!(kind(&m, "map{a"), &int(1));
    let m = parse("map {a:1}\n");
    assert_eq!(kind(m.get("map").unwrap().as_map().unwrap(), "a"), &int(1));
}

#[test]
fn variables_copy_maps_and_arrays() {
    let m = parse("USERS = [{user: a}, {user: b}]\nauthorization { users = $USERS }\n");
    let users = m
        .get("authorization")
        .unwrap()
        .as_map()
        .unwrap()
        .get("users")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(kind(users[1].as_map().unwrap(), "user"), &s("b"));
}

#[test]
fn variables_are_case_sensitive_and_must_be_defined_earlier() {
    let e = err("P = 5\nport: $p\n");
    assert!(e.message.contains("'p' can not be found"), "{e}");
    assert_eq!((e.line, e.column), (2, 7));

    let e = err("port: $LATER_TERN_TEST_UNSET\nLATER_TERN_TEST_UNSET: 1\n");
    assert_eq!((e.line, e.column), (1, 7));

    // A key defined in a sibling map is not visible.
    let e = err("a { v: 1 }\nb { x: $v }\n");
    assert_eq!((e.line, e.column), (2, 8));
}

#[test]
fn bcrypt_hashes_are_not_variables() {
    let m = parse("password: $2a$11$W2zko751KUvVy59mUTWmpOdWjpEm5qhcCZRd05GjI/sSOT.xtiHyG\n");
    assert_eq!(
        kind(&m, "password"),
        &s("$2a$11$W2zko751KUvVy59mUTWmpOdWjpEm5qhcCZRd05GjI/sSOT.xtiHyG")
    );
}

#[test]
fn environment_variables() {
    std::env::set_var("TERN_CFG_TEST_PORT", "4333");
    std::env::set_var("TERN_CFG_TEST_HOST", "nats://host:4222");
    std::env::set_var("TERN_CFG_TEST_LIST", "[a, b]");
    std::env::set_var("TERN_CFG_TEST_EMPTY", "");
    std::env::set_var("TERN_CFG_TEST_SIZE", "1MB");
    std::env::set_var("TERN_CFG_TEST_NESTED", "$TERN_CFG_TEST_PORT");
    let m = parse(
        "port: $TERN_CFG_TEST_PORT\nurl: $TERN_CFG_TEST_HOST\nl: $TERN_CFG_TEST_LIST\n\
         e: $TERN_CFG_TEST_EMPTY\nsz: $TERN_CFG_TEST_SIZE\nn: $TERN_CFG_TEST_NESTED\n\
         m { p: $TERN_CFG_TEST_PORT }\n",
    );
    assert_eq!(kind(&m, "port"), &int(4333));
    assert_eq!(kind(&m, "url"), &s("nats://host:4222"));
    assert_eq!(kinds(m.get("l").unwrap()), vec![s("a"), s("b")]);
    assert_eq!(kind(&m, "e"), &s(""));
    assert_eq!(kind(&m, "sz"), &int(1 << 20));
    assert_eq!(kind(&m, "n"), &int(4333));
    assert_eq!(kind(m.get("m").unwrap().as_map().unwrap(), "p"), &int(4333));
    // Positions of env-derived values point at the reference.
    let l = m.get("l").unwrap();
    assert_eq!((l.pos.line, l.pos.column), (3, 4));
    assert_eq!(l.as_array().unwrap()[1].pos, l.pos);

    // A key defined in the config wins over the environment.
    let m = parse("TERN_CFG_TEST_PORT: 1\nport: $TERN_CFG_TEST_PORT\n");
    assert_eq!(kind(&m, "port"), &int(1));
}

#[test]
fn environment_variable_errors() {
    std::env::set_var("TERN_CFG_TEST_BAD", "two words");
    let e = err("x: 1\nport: $TERN_CFG_TEST_BAD\n");
    assert!(e.message.contains("could not be parsed"), "{e}");
    assert_eq!((e.line, e.column), (2, 7));

    std::env::set_var("TERN_CFG_TEST_CYCLE_A", "$TERN_CFG_TEST_CYCLE_B");
    std::env::set_var("TERN_CFG_TEST_CYCLE_B", "$TERN_CFG_TEST_CYCLE_A");
    let e = err("port: $TERN_CFG_TEST_CYCLE_A\n");
    assert!(e.message.contains("cycle"), "{e}");

    let e = err("port: $TERN_CFG_TEST_DEFINITELY_UNSET\n");
    assert!(e.message.contains("can not be found"), "{e}");
    assert_eq!((e.line, e.column), (1, 7));
}

#[test]
fn top_level_wrapper_and_json() {
    let m = parse(
        "{\n  \"http_port\": 8227,\n  \"port\": 4227,\n  \"write_deadline\": \"1h\",\n  \"cluster\": {\n    \"port\": 6222,\n    \"routes\": [\n      \"nats://127.0.0.1:4222\",\n      \"nats://127.0.0.1:4223\"\n    ]\n  }\n}\n",
    );
    assert_eq!(kind(&m, "http_port"), &int(8227));
    assert_eq!(kind(&m, "write_deadline"), &s("1h"));
    let c = m.get("cluster").unwrap().as_map().unwrap();
    assert_eq!(kind(c, "port"), &int(6222));
    assert_eq!(c.get("routes").unwrap().as_array().unwrap().len(), 2);

    let m = parse("{ listen: 0.0.0.0:4222 }");
    assert_eq!(kind(&m, "listen"), &s("0.0.0.0:4222"));
    let m = parse("{\n  {\n    listen: 0.0.0.0:4222 // c\n  }\n  # c1\n}\n# c2\n");
    assert_eq!(kind(&m, "listen"), &s("0.0.0.0:4222"));
    let m = parse("{\n  \"store_dir\": \"/tmp/nats\"\n  \"max_mem\": 1000000,\n}\n");
    assert_eq!(kind(&m, "max_mem"), &int(1_000_000));
}

#[test]
fn trailing_brace_is_tolerated_like_nats_server() {
    let m = parse("accounts { users = [{}]}\n}\n");
    assert!(m.get("accounts").is_some());
    let m = parse("port: 4222 }");
    assert_eq!(kind(&m, "port"), &int(4222));
    let m = parse("{ port: 1 }}");
    assert_eq!(kind(&m, "port"), &int(1));
}

#[test]
fn duplicate_keys_last_wins_and_case_insensitive_lookup() {
    let m = parse("Port: 1\nport: 2\nPORT: 3\nport: 4\n");
    assert_eq!(m.get("port").unwrap().as_i64().unwrap(), 4);
    assert_eq!(m.get("pOrT").unwrap().as_i64().unwrap(), 4);
    assert_eq!(m.get_exact("Port").unwrap().as_i64().unwrap(), 1);
    assert_eq!(m.get_exact("PORT").unwrap().as_i64().unwrap(), 3);
    assert_eq!(m.len(), 3);
    assert!(m.contains_key("PoRt"));
    assert!(!m.contains_key("host"));
}

#[test]
fn crlf_line_endings_and_bom() {
    let m =
        parse("\u{feff}port: 4222\r\nname: x\r\nm {\r\n  a: 1\r\n}\r\nl: [\r\n 1\r\n 2\r\n]\r\n");
    assert_eq!(kind(&m, "port"), &int(4222));
    assert_eq!(kind(&m, "name"), &s("x"));
    assert_eq!(kind(m.get("m").unwrap().as_map().unwrap(), "a"), &int(1));
    assert_eq!(kinds(m.get("l").unwrap()), vec![int(1), int(2)]);
}

#[test]
fn positions_of_keys_and_values() {
    let m = parse("# c\nport: 4222\ncluster {\n    name:   \"C1\"\n}\n");
    let e = m.entry("port").unwrap();
    assert_eq!((e.key_pos.line, e.key_pos.column), (2, 1));
    assert_eq!((e.value.pos.line, e.value.pos.column), (2, 7));
    let c = m.entry("cluster").unwrap();
    assert_eq!((c.value.pos.line, c.value.pos.column), (3, 9));
    let n = c.value.as_map().unwrap().entry("name").unwrap();
    assert_eq!((n.key_pos.line, n.key_pos.column), (4, 5));
    assert_eq!((n.value.pos.line, n.value.pos.column), (4, 13));
    assert_eq!(n.value.pos.file, None);
}

#[test]
fn syntax_errors_have_positions() {
    let cases: &[(&str, (u32, u32), &str)] = &[
        (
            "a: 1\nb: \"unterminated\n",
            (2, 4),
            "unterminated double-quoted string",
        ),
        ("a: 'open", (1, 4), "unterminated single-quoted string"),
        ("a: 1\nm {\n  x: 1\n", (2, 3), "unterminated map"),
        ("l: [1, 2", (1, 4), "unterminated array"),
        ("l: [1,,2]", (1, 7), "unexpected ','"),
        ("l: [1 2]", (1, 7), "expected ','"),
        ("port: 4222 ]", (1, 12), "expected a new line"),
        ("port: 1 2", (1, 9), "expected a new line"),
        ("port:\n4222", (1, 6), "found a new line"),
        ("a: 1\nport", (2, 1), "has no value"),
        ("a: 1\n}\nb: 2", (2, 1), "unexpected '}'"),
        ("m { a: 1 ]", (1, 10), "after a map value"),
        ("m { ] }", (1, 5), "unexpected ']'"),
        ("dir: ./data", (1, 6), "quote strings that start with '.'"),
        ("m { a: 1 b: 2 }", (1, 10), "after a map value"),
        ("m { a: , b: 2 }", (1, 8), "expected a value"),
        ("a: \"bad \\q escape\"", (1, 10), "invalid escape"),
        ("a: \"\\xZZ\"", (1, 7), "hexadecimal"),
        ("a: 1.", (1, 6), "digit after the '.'"),
        ("a: .5", (1, 4), "floats must start with a digit"),
        ("a: -x", (1, 5), "expected a digit"),
        ("a: 1.5s", (1, 7), "expected a new line"),
        ("a: 2016-05-04", (1, 14), "ISO 8601"),
        ("a: 12-3", (1, 6), "ISO 8601"),
        ("a: 1kbb", (1, 4), "unknown size suffix"),
        ("a: 99999999999999999999", (1, 4), "out of range"),
        ("a: 10E", (1, 4), "out of range"),
        (": 1", (1, 1), "unexpected key separator"),
        ("t (\nnever closed", (1, 3), "unterminated block string"),
        ("\"open key: 1", (1, 1), "unterminated quoted key"),
        ("include\n", (1, 8), "expected an include path"),
        ("include [a]", (1, 9), "expected an include path"),
    ];
    for (text, (line, column), msg) in cases {
        let e = err(text);
        assert!(
            e.message.contains(msg),
            "input {text:?}: message {:?} lacks {msg:?}",
            e.message
        );
        assert_eq!((e.line, e.column), (*line, *column), "input {text:?}: {e}");
        assert_eq!(e.file, None);
    }
}

#[test]
fn error_display() {
    let e = err("a: 1\nb: $TERN_CFG_TEST_NOPE_NOPE\n");
    assert!(e.to_string().starts_with("2:4: variable reference"), "{e}");
    let e = ConfigError {
        message: "boom".into(),
        file: Some("x.conf".into()),
        line: 3,
        column: 10,
    };
    assert_eq!(e.to_string(), "x.conf:3:10: boom");
    let e = ConfigError {
        message: "cannot read".into(),
        file: Some("x.conf".into()),
        line: 0,
        column: 0,
    };
    assert_eq!(e.to_string(), "x.conf: cannot read");
    let _: &dyn std::error::Error = &e;
}

#[test]
fn includes() {
    let dir = temp_dir("includes");
    write(
        &dir,
        "auth.conf",
        "authorization {\n  user: derek\n  password: $PASS\n}\nPASS_USED: 1\n",
    );
    write(
        &dir,
        "sub/inner.conf",
        "# nested\ninclude ../leaf.conf\ninner: yes\n",
    );
    write(&dir, "leaf.conf", "leaf_value = 42\n");
    write(&dir, "cluster_extra.conf", "routes = [nats://a:6222]\n");
    let main = write(
        &dir,
        "main.conf",
        "port: 4222\n\
         include ./sub/inner.conf\n\
         include \"leaf.conf\"; after_include: $leaf_value\n\
         cluster {\n  name: C1\n  include 'cluster_extra.conf'\n}\n\
         { include cluster_extra.conf}\n",
    );
    std::env::set_var("PASS", "from-env");
    let m = parse_file(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kind(&m, "port"), &int(4222));
    assert_eq!(kind(&m, "inner"), &ValueKind::Bool(true));
    assert_eq!(kind(&m, "leaf_value"), &int(42));
    assert_eq!(kind(&m, "after_include"), &int(42));
    let c = m.get("cluster").unwrap().as_map().unwrap();
    assert_eq!(kind(c, "name"), &s("C1"));
    assert_eq!(kinds(c.get("routes").unwrap()), vec![s("nats://a:6222")]);
    assert!(m.get("routes").is_some());
    // Values from an included file carry that file's name and positions.
    let leaf = m.entry("leaf_value").unwrap();
    assert!(leaf.key_pos.file.as_deref().unwrap().ends_with("leaf.conf"));
    assert_eq!((leaf.value.pos.line, leaf.value.pos.column), (1, 14));
    let port = &m.get("port").unwrap().pos;
    assert!(port.file.as_deref().unwrap().ends_with("main.conf"));

    // Keys included into a map can be used as variables later in that map.
    write(
        &dir,
        "passwords.conf",
        "ALICE_PASS: a1\nBOB_PASS = \"b2\"\n",
    );
    let main3 = write(
        &dir,
        "main3.conf",
        "authorization {\n  include \"./passwords.conf\"\n  users = [\n    {user: alice, password: $ALICE_PASS}\n    {user: bob, password: $BOB_PASS}\n  ]\n}\n",
    );
    let m = parse_file(&main3).unwrap_or_else(|e| panic!("{e}"));
    let auth = m.get("authorization").unwrap().as_map().unwrap();
    let users = auth.get("users").unwrap().as_array().unwrap();
    assert_eq!(kind(users[0].as_map().unwrap(), "password"), &s("a1"));
    assert_eq!(kind(users[1].as_map().unwrap(), "password"), &s("b2"));
    assert!(auth.entry("ALICE_PASS").unwrap().used_as_variable);

    // The included file sees the environment but not the includer's keys.
    let main2 = write(&dir, "main2.conf", "PASS: local\ninclude auth.conf\n");
    let m = parse_file(&main2).unwrap();
    let auth = m.get("authorization").unwrap().as_map().unwrap();
    assert_eq!(kind(auth, "password"), &s("from-env"));
}

#[test]
fn include_errors() {
    let dir = temp_dir("include-errors");
    write(&dir, "bad.conf", "ok: 1\nbroken: \"no end\n");
    let main = write(&dir, "main.conf", "a: 1\n  include bad.conf\n");
    let e = parse_file(&main).unwrap_err();
    assert!(e.file.as_deref().unwrap().ends_with("bad.conf"), "{e}");
    assert_eq!((e.line, e.column), (2, 9));
    assert!(e.message.contains("included from"), "{e}");
    assert!(e.message.contains("main.conf:2:11"), "{e}");

    let main = write(&dir, "missing.conf", "a: 1\ninclude nope.conf\n");
    let e = parse_file(&main).unwrap_err();
    assert!(e.file.as_deref().unwrap().ends_with("missing.conf"), "{e}");
    assert_eq!((e.line, e.column), (2, 9));
    assert!(e.message.contains("cannot read include file"), "{e}");

    write(&dir, "loop_a.conf", "include loop_b.conf\n");
    write(&dir, "loop_b.conf", "include loop_a.conf\n");
    let e = parse_file(&dir.join("loop_a.conf")).unwrap_err();
    assert!(e.message.contains("include cycle"), "{e}");

    let e = parse_file(&dir.join("does-not-exist.conf")).unwrap_err();
    assert_eq!((e.line, e.column), (0, 0));
    assert!(
        e.to_string()
            .contains("does-not-exist.conf: cannot read config file"),
        "{e}"
    );
}

#[test]
fn include_from_parse_str_with_absolute_path() {
    let dir = temp_dir("include-abs");
    let inc = write(&dir, "abs.conf", "from_abs: true\n");
    let m = parse(&format!("include '{}'\nx: 1\n", inc.display()));
    assert_eq!(kind(&m, "from_abs"), &ValueKind::Bool(true));
    // The keyword needs whitespace; `include: x` is an ordinary key.
    let m = parse("include: x\n");
    assert_eq!(kind(&m, "include"), &s("x"));
}

#[test]
fn typed_helpers() {
    let m = parse(concat!(
        "s: hello\ni: 12\nf: 2.5\nb: on\n",
        "size_int: 1MB\nsize_str: \"1G\"\nsize_k: \"64K\"\nsize_empty: \"\"\nsize_bad: \"1GB\"\n",
        "d1: \"2m\"\nd2: \"10s\"\nd3: \"500ms\"\nd4: \"1h30m\"\nd5: 120\nd6: 0.5\nd7: \"1.5s\"\n",
        "d8: \"250us\"\nd9: \"0\"\nd10: 10s\nbad_d1: \"10\"\nbad_d2: \"-1s\"\nbad_d3: \"1x\"\nbad_d4: -3\n",
        "arr: [1]\nmap: { k: v }\n",
    ));
    let v = |k: &str| m.get(k).unwrap();
    assert_eq!(v("s").as_str().unwrap(), "hello");
    assert_eq!(v("i").as_i64().unwrap(), 12);
    assert_eq!(v("f").as_f64().unwrap(), 2.5);
    assert_eq!(v("i").as_f64().unwrap(), 12.0);
    assert!(v("b").as_bool().unwrap());
    assert_eq!(v("size_int").as_size_bytes().unwrap(), 1 << 20);
    assert_eq!(v("size_str").as_size_bytes().unwrap(), 1 << 30);
    assert_eq!(v("size_k").as_size_bytes().unwrap(), 64 << 10);
    assert_eq!(v("size_empty").as_size_bytes().unwrap(), 0);
    assert!(v("size_bad").as_size_bytes().is_err());
    assert_eq!(v("d1").as_duration().unwrap(), Duration::from_secs(120));
    assert_eq!(v("d2").as_duration().unwrap(), Duration::from_secs(10));
    assert_eq!(v("d3").as_duration().unwrap(), Duration::from_millis(500));
    assert_eq!(v("d4").as_duration().unwrap(), Duration::from_secs(5400));
    assert_eq!(v("d5").as_duration().unwrap(), Duration::from_secs(120));
    assert_eq!(v("d6").as_duration().unwrap(), Duration::from_millis(500));
    assert_eq!(v("d7").as_duration().unwrap(), Duration::from_millis(1500));
    assert_eq!(v("d8").as_duration().unwrap(), Duration::from_micros(250));
    assert_eq!(v("d9").as_duration().unwrap(), Duration::ZERO);
    assert_eq!(v("d10").as_duration().unwrap(), Duration::from_secs(10));
    for k in ["bad_d1", "bad_d2", "bad_d3", "bad_d4", "arr"] {
        assert!(v(k).as_duration().is_err(), "{k}");
    }
    assert_eq!(v("arr").as_array().unwrap().len(), 1);
    assert_eq!(kind(v("map").as_map().unwrap(), "k"), &s("v"));

    // Type errors name the expected type and point at the value.
    let e = v("s").as_i64().unwrap_err();
    assert_eq!((e.line, e.column), (1, 4));
    assert!(
        e.message
            .contains("expected an integer, found string \"hello\""),
        "{e}"
    );
    let e = v("i").as_str().unwrap_err();
    assert_eq!((e.line, e.column), (2, 4));
    assert!(v("s").as_bool().is_err());
    assert!(v("s").as_map().is_err());
    assert!(v("map").as_array().is_err());
    let e = v("bad_d3").as_duration().unwrap_err();
    assert!(e.message.contains("unknown unit"), "{e}");
    let e = v("i").error("port out of range");
    assert_eq!(e.to_string(), "2:4: port out of range");
}

#[test]
fn realistic_nats_server_config() {
    let dir = temp_dir("realistic");
    let path = write(
        &dir,
        "nats.conf",
        r#"
# Server identity
port: 4222
http_port: 8222
server_name: "n1"
max_payload: 1MB
ping_interval: "2m"
authorization { user: derek, password: "s3cr3t", timeout: 2 }
cluster { name: C1, listen: 0.0.0.0:6222, routes = [ nats://a:6222, nats://b:6222 ] }

jetstream {
  store_dir: "/var/lib/nats"
  max_mem: 1G
  max_file: "10G"
}

accounts: {
  SYS: { users: [ { user: admin, password: $2a$11$abcdefghijklmnopqrstuv } ] }
  APP: {
    jetstream: enabled
    users = [
      { user: app, password: secret, permissions: { publish: ["app.>"], subscribe: ["_INBOX.>", "app.>"] } }
    ]
  }
}
system_account: SYS
debug: false
trace: off
"#,
    );
    let m = parse_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.get("port").unwrap().as_i64().unwrap(), 4222);
    assert_eq!(m.get("http_port").unwrap().as_i64().unwrap(), 8222);
    assert_eq!(m.get("server_name").unwrap().as_str().unwrap(), "n1");
    assert_eq!(
        m.get("max_payload").unwrap().as_size_bytes().unwrap(),
        1_048_576
    );
    assert_eq!(
        m.get("ping_interval").unwrap().as_duration().unwrap(),
        Duration::from_secs(120)
    );
    let auth = m.get("authorization").unwrap().as_map().unwrap();
    assert_eq!(auth.get("user").unwrap().as_str().unwrap(), "derek");
    assert_eq!(auth.get("password").unwrap().as_str().unwrap(), "s3cr3t");
    assert_eq!(
        auth.get("timeout").unwrap().as_duration().unwrap(),
        Duration::from_secs(2)
    );
    let cluster = m.get("cluster").unwrap().as_map().unwrap();
    assert_eq!(cluster.get("name").unwrap().as_str().unwrap(), "C1");
    assert_eq!(
        cluster.get("listen").unwrap().as_str().unwrap(),
        "0.0.0.0:6222"
    );
    let routes: Vec<&str> = cluster
        .get("routes")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(routes, ["nats://a:6222", "nats://b:6222"]);
    let js = m.get("jetstream").unwrap().as_map().unwrap();
    assert_eq!(
        js.get("max_mem").unwrap().as_size_bytes().unwrap(),
        1_000_000_000
    );
    assert_eq!(
        js.get("max_file").unwrap().as_size_bytes().unwrap(),
        10 << 30
    );
    let accounts = m.get("accounts").unwrap().as_map().unwrap();
    let sys_user = &accounts
        .get("SYS")
        .unwrap()
        .as_map()
        .unwrap()
        .get("users")
        .unwrap()
        .as_array()
        .unwrap()[0];
    assert_eq!(
        sys_user
            .as_map()
            .unwrap()
            .get("password")
            .unwrap()
            .as_str()
            .unwrap(),
        "$2a$11$abcdefghijklmnopqrstuv"
    );
    let app = accounts.get("app").unwrap().as_map().unwrap();
    assert_eq!(app.get("jetstream").unwrap().as_str().unwrap(), "enabled");
    let perms = app.get("users").unwrap().as_array().unwrap()[0]
        .as_map()
        .unwrap()
        .get("permissions")
        .unwrap()
        .as_map()
        .unwrap();
    assert_eq!(perms.get("subscribe").unwrap().as_array().unwrap().len(), 2);
    assert!(!m.get("debug").unwrap().as_bool().unwrap());
    assert!(!m.get("trace").unwrap().as_bool().unwrap());
    let e = m.get("cluster").unwrap().pos.clone();
    assert_eq!(e.line, 9);
    assert!(e.file.as_deref().unwrap().ends_with("nats.conf"));
}
