//! Wire compatibility of `meshlat/v1` against the committed baseline descriptor set.
//!
//! Regions upgrade one at a time, so version N must talk to N−1: agents, controllers, federation
//! peers and the state files (protobuf) of the previous release. This test compares the protos as
//! built now with `proto/compat/meshlat_v1.binpb`, the descriptor set of the last release, and
//! fails on any change that breaks the wire or the stored state:
//!
//! - a file, message, enum, service or method of the baseline is gone;
//! - a field number of the baseline is gone without being `reserved`, or changed its name, type,
//!   label (singular/repeated/optional), message/enum type, or oneof;
//! - an enum value number of the baseline is gone without being `reserved`, or renamed;
//! - a method changed its request/response type or streaming.
//!
//! Adding files, messages, fields, values and methods is allowed. To take a new baseline at a
//! release (never to silence this test): `MESHLAT_WRITE_PROTO_BASELINE=1 cargo test -p
//! meshlat-proto --test compat`, and commit the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use prost::Message;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};

fn baseline_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compat/meshlat_v1.binpb")
}

fn current() -> FileDescriptorSet {
    FileDescriptorSet::decode(meshlat_proto::FILE_DESCRIPTOR_SET).expect("built descriptor set")
}

/// Every message (nested ones too) by full name.
fn messages(fds: &FileDescriptorSet) -> BTreeMap<String, DescriptorProto> {
    fn walk(prefix: &str, m: &DescriptorProto, out: &mut BTreeMap<String, DescriptorProto>) {
        let name = format!("{prefix}.{}", m.name());
        for n in &m.nested_type {
            walk(&name, n, out);
        }
        out.insert(name, m.clone());
    }
    let mut out = BTreeMap::new();
    for f in &fds.file {
        for m in &f.message_type {
            walk(&format!(".{}", f.package()), m, &mut out);
        }
    }
    out
}

/// Every enum (nested ones too) by full name.
fn enums(fds: &FileDescriptorSet) -> BTreeMap<String, EnumDescriptorProto> {
    fn walk(prefix: &str, m: &DescriptorProto, out: &mut BTreeMap<String, EnumDescriptorProto>) {
        let name = format!("{prefix}.{}", m.name());
        for e in &m.enum_type {
            out.insert(format!("{name}.{}", e.name()), e.clone());
        }
        for n in &m.nested_type {
            walk(&name, n, out);
        }
    }
    let mut out = BTreeMap::new();
    for f in &fds.file {
        let p = format!(".{}", f.package());
        for e in &f.enum_type {
            out.insert(format!("{p}.{}", e.name()), e.clone());
        }
        for m in &f.message_type {
            walk(&p, m, &mut out);
        }
    }
    out
}

fn services(fds: &FileDescriptorSet) -> BTreeMap<String, ServiceDescriptorProto> {
    fds.file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| (format!(".{}.{}", f.package(), s.name()), s.clone()))
        })
        .collect()
}

fn files(fds: &FileDescriptorSet) -> BTreeSet<String> {
    fds.file
        .iter()
        .map(FileDescriptorProto::name)
        .map(str::to_string)
        .collect()
}

/// What a field is on the wire, for comparison.
fn field_shape(m: &DescriptorProto, f: &prost_types::FieldDescriptorProto) -> String {
    let oneof = f
        .oneof_index
        .filter(|_| !f.proto3_optional())
        .and_then(|i| m.oneof_decl.get(usize::try_from(i).ok()?))
        .map_or(String::new(), |o| format!(" oneof {}", o.name()));
    format!(
        "{} {:?} {:?} {}{}{}",
        f.name(),
        f.label(),
        f.r#type(),
        f.type_name(),
        if f.proto3_optional() { " optional" } else { "" },
        oneof
    )
}

/// Every incompatibility of `new` against `old`, as readable lines.
fn breaking_changes(old: &FileDescriptorSet, new: &FileDescriptorSet) -> Vec<String> {
    let mut out = Vec::new();
    let new_files = files(new);
    for f in files(old) {
        if !new_files.contains(&f) {
            out.push(format!("file {f} removed"));
        }
    }
    let new_msgs = messages(new);
    for (name, m) in messages(old) {
        let Some(n) = new_msgs.get(&name) else {
            out.push(format!("message {name} removed"));
            continue;
        };
        for f in &m.field {
            let num = f.number();
            match n.field.iter().find(|g| g.number() == num) {
                Some(g) => {
                    let (a, b) = (field_shape(&m, f), field_shape(n, g));
                    if a != b {
                        out.push(format!("{name} field {num} changed: `{a}` -> `{b}`"));
                    }
                }
                None => {
                    let reserved = n
                        .reserved_range
                        .iter()
                        .any(|r| r.start() <= num && num < r.end());
                    if !reserved {
                        out.push(format!(
                            "{name} field {num} ({}) removed without `reserved {num};`",
                            f.name()
                        ));
                    }
                }
            }
        }
    }
    let new_enums = enums(new);
    for (name, e) in enums(old) {
        let Some(n) = new_enums.get(&name) else {
            out.push(format!("enum {name} removed"));
            continue;
        };
        for v in &e.value {
            match n.value.iter().find(|w| w.number() == v.number()) {
                Some(w) if w.name() == v.name() => {}
                Some(w) => out.push(format!(
                    "{name} value {} renamed {} -> {}",
                    v.number(),
                    v.name(),
                    w.name()
                )),
                None => {
                    let reserved = n
                        .reserved_range
                        .iter()
                        .any(|r| r.start() <= v.number() && v.number() <= r.end());
                    if !reserved {
                        out.push(format!(
                            "{name} value {} ({}) removed",
                            v.number(),
                            v.name()
                        ));
                    }
                }
            }
        }
    }
    let new_svcs = services(new);
    for (name, s) in services(old) {
        let Some(n) = new_svcs.get(&name) else {
            out.push(format!("service {name} removed"));
            continue;
        };
        for m in &s.method {
            let shape = |m: &prost_types::MethodDescriptorProto| {
                format!(
                    "({}{}) -> ({}{})",
                    if m.client_streaming() { "stream " } else { "" },
                    m.input_type(),
                    if m.server_streaming() { "stream " } else { "" },
                    m.output_type()
                )
            };
            match n.method.iter().find(|x| x.name() == m.name()) {
                Some(x) if shape(x) == shape(m) => {}
                Some(x) => out.push(format!(
                    "{name}.{} changed: {} -> {}",
                    m.name(),
                    shape(m),
                    shape(x)
                )),
                None => out.push(format!("{name}.{} removed", m.name())),
            }
        }
    }
    out
}

#[test]
fn protos_are_wire_compatible_with_the_committed_baseline() {
    let now = current();
    if std::env::var_os("MESHLAT_WRITE_PROTO_BASELINE").is_some() {
        std::fs::create_dir_all(baseline_path().parent().expect("parent")).expect("mkdir");
        std::fs::write(baseline_path(), now.encode_to_vec()).expect("write baseline");
        eprintln!("wrote {}", baseline_path().display());
    }
    let bytes = std::fs::read(baseline_path()).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the committed baseline; see this test's docs)",
            baseline_path().display()
        )
    });
    let old = FileDescriptorSet::decode(bytes.as_slice()).expect("baseline decodes");
    let problems = breaking_changes(&old, &now);
    let (m_old, m_new) = (messages(&old).len(), messages(&now).len());
    println!(
        "proto compat: baseline {m_old} messages, now {m_new}; {} breaking changes",
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "breaking proto changes against {}:\n  {}",
        baseline_path().display(),
        problems.join("\n  ")
    );
}

/// The checker itself must catch what it claims to: each kind of break, made on a copy of the
/// baseline, is reported; additions are not.
#[test]
fn the_checker_catches_each_kind_of_break() {
    let base = current();
    assert!(breaking_changes(&base, &base).is_empty());

    fn first_msg(fds: &mut FileDescriptorSet) -> &mut DescriptorProto {
        fds.file
            .iter_mut()
            .flat_map(|f| f.message_type.iter_mut())
            .find(|m| m.field.len() >= 2)
            .expect("a message with two fields")
    }

    // Addition: a new field is fine.
    let mut add = base.clone();
    let m = first_msg(&mut add);
    let mut extra = m.field[0].clone();
    extra.name = Some("brand_new_field".into());
    extra.number = Some(9999);
    extra.json_name = None;
    m.field.push(extra);
    assert!(breaking_changes(&base, &add).is_empty());

    // Removal without reservation.
    let mut rm = base.clone();
    first_msg(&mut rm).field.remove(0);
    let p = breaking_changes(&base, &rm);
    assert!(p.iter().any(|l| l.contains("removed without")), "{p:?}");

    // Removal with `reserved` is fine.
    let mut rsv = base.clone();
    let m = first_msg(&mut rsv);
    let num = m.field[0].number();
    m.field.remove(0);
    m.reserved_range
        .push(prost_types::descriptor_proto::ReservedRange {
            start: Some(num),
            end: Some(num + 1),
        });
    assert!(breaking_changes(&base, &rsv).is_empty());

    // Type change.
    let mut ty = base.clone();
    let f = &mut first_msg(&mut ty).field[0];
    f.r#type = Some(
        if f.r#type() == prost_types::field_descriptor_proto::Type::Bytes {
            prost_types::field_descriptor_proto::Type::Int64 as i32
        } else {
            prost_types::field_descriptor_proto::Type::Bytes as i32
        },
    );
    f.type_name = None;
    let p = breaking_changes(&base, &ty);
    assert!(p.iter().any(|l| l.contains("changed")), "{p:?}");

    // A removed rpc and a removed message.
    let mut svc = base.clone();
    let s = svc
        .file
        .iter_mut()
        .flat_map(|f| f.service.iter_mut())
        .next()
        .expect("a service");
    s.method.remove(0);
    let p = breaking_changes(&base, &svc);
    assert!(p.iter().any(|l| l.ends_with("removed")), "{p:?}");
    let mut msg = base.clone();
    msg.file
        .iter_mut()
        .find(|f| !f.message_type.is_empty())
        .expect("a file with messages")
        .message_type
        .pop();
    let p = breaking_changes(&base, &msg);
    assert!(p.iter().any(|l| l.starts_with("message ")), "{p:?}");
}
