#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

fn id(a: &str) -> Result<String, AuthorityError> {
    parse_authority(a).map(|d| d.id())
}

#[test]
fn every_spelling_of_loopback_is_one_address() {
    for a in [
        "127.0.0.1:443",
        "2130706433:443",
        "0x7f000001:443",
        "0x7F.1:443",
        "0177.0.0.1:443",
        "0177.0.0.01:443",
        "127.1:443",
        "127.0.1:443",
        "127.0.0.1.:443",
        "[::ffff:127.0.0.1]:443",
        "[::FFFF:7f00:1]:443",
    ] {
        assert_eq!(id(a), Ok("127.0.0.1:443".into()), "{a}");
    }
    assert_eq!(id("[::ffff:a9fe:a9fe]:80"), Ok("169.254.169.254:80".into()));
    assert_eq!(id("[::1]:22"), Ok("[::1]:22".into()));
    assert_eq!(
        id("[64:ff9b::a9fe:a9fe]:80"),
        Ok("[64:ff9b::a9fe:a9fe]:80".into())
    );
}

#[test]
fn names_are_lower_cased_and_must_be_plain() {
    assert_eq!(
        id("API.Example.TEST.:443"),
        Ok("api.example.test:443".into())
    );
    for bad in [
        "api.example.test@127.0.0.1:443",
        "[fe80::1%25lo]:443",
        "[fe80::1%lo]:443",
        "exa mple:443",
        "a..b:443",
        "-a.b:443",
        "api.example.1:443",
        "256.0.0.1:443",
        "1.2.3.4.5:443",
        "0x:443",
        "08.0.0.1:443",
        "4294967296:443",
        "[not-v6]:443",
        "bücher.example:443",
    ] {
        assert_eq!(id(bad), Err(AuthorityError::BadHost), "{bad}");
    }
}

#[test]
fn the_port_is_required_and_sane() {
    for bad in [
        "api.example.test",
        "api.example.test:",
        "api.example.test:0",
        "api.example.test:65536",
        "api.example.test:+443",
        "api.example.test:44a",
        ":443",
        "::1:443",
        "[::1]",
        "[::1]443",
        "",
    ] {
        assert_eq!(id(bad), Err(AuthorityError::Malformed), "{bad:?}");
    }
}

#[test]
fn absolute_form_splits_destination_and_path() {
    let (d, p) = parse_absolute("http://Example.test/a/b?c=1#frag").unwrap();
    assert_eq!((d.id(), p.as_str()), ("example.test:80".into(), "/a/b?c=1"));
    let (d, p) = parse_absolute("HTTP://127.1:8080").unwrap();
    assert_eq!((d.id(), p.as_str()), ("127.0.0.1:8080".into(), "/"));
    let (_, p) = parse_absolute("http://h.test?q").unwrap();
    assert_eq!(p, "/?q");
    assert_eq!(
        parse_absolute("https://h.test/").unwrap_err(),
        AuthorityError::Malformed
    );
    assert_eq!(
        parse_absolute("/path").unwrap_err(),
        AuthorityError::Malformed
    );
    assert_eq!(
        parse_absolute("http://user@127.0.0.1/").unwrap_err(),
        AuthorityError::BadHost
    );
}

#[test]
fn address_classes() {
    let p = |s: &str| is_public(s.parse().unwrap());
    for denied in [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.255",
        "169.254.169.254",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "240.0.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "198.18.0.1",
        "::1",
        "::",
        "fd00:ec2::254",
        "fc00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::1",
        "2002:7f00:1::",
        "2001:db8::1",
        "2001::1",
        "::127.0.0.1",
    ] {
        assert!(!p(denied), "{denied} must be refused");
    }
    for public in [
        "93.184.216.34",
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700::1111",
        "64:ff9b::808:808",
        "2002:808:808::",
        "::ffff:8.8.8.8",
    ] {
        assert!(p(public), "{public} is public");
    }
}
