//! A one-pass reader of the AdmissionReviews the API server sends, into the
//! same types serde_json reads them into ([`super::review::AdmissionReview`]),
//! without serde's per-field machinery: on the admission path, reading the
//! object with serde_json's typed reader cost as much again as the JSON scan
//! itself.
//!
//! It is strict and it is partial. Whatever it accepts, serde_json accepts and
//! reads into an equal value (the differential fuzz target `admission_review`
//! and the tests below hold it to that). Anything it does not handle itself
//! (an escape in a string it keeps, a negative or fractional number where an
//! integer is kept, a struct written as an array, nesting deeper than
//! [`MAX_DEPTH`], malformed JSON of any kind) makes it give up, and the caller
//! reads the body with serde_json, which then gives the answer and the error
//! message it always gave.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;

use super::review::{self, AdmissionRequest, AdmissionReview, GroupVersionKind, Operation, UserInfo};
use crate::policy::model::{
    Capabilities, Container, ExecAction, Lifecycle, LocalObjectReference, ObjectMeta, OwnerReference, PodOs,
    PodSecurityContext, PodSpec, Probe, SecurityContext,
};
use crate::policy::workload::{JobSpecShape, JobTemplateShape, ObjectShape, SpecShape, TemplateShape};

/// Nesting deeper than this is left to serde_json (whose own limit is 128).
const MAX_DEPTH: u32 = 100;

/// Where the first quote, backslash or control character is, from `at` on:
/// eight bytes at a time, as serde_json looks for them.
#[inline(always)]
fn special(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let hits = ((word.wrapping_sub(ONES * 0x20) & !word)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash))
            & (ONES << 7);
        if hits != 0 {
            // The lowest flagged byte is always a real one (a borrow only
            // flags bytes above it).
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    rest.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|n| at + n)
}

/// Past the digits from `at` on.
fn digits(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// Reads a review the API server sent: with the one-pass reader when it can,
/// with [`review::parse`] (serde_json, and its errors) otherwise.
pub fn read(body: &[u8]) -> Result<AdmissionReview, serde_json::Error> {
    match review(body) {
        Some(review) => Ok(review),
        None => review::parse(body),
    }
}

/// Reads a review, or `None` when serde_json has to (see the module docs).
/// As serde_json's `from_slice`, it checks that the strings it keeps are
/// UTF-8, and only those.
pub fn review(bytes: &[u8]) -> Option<AdmissionReview> {
    let mut s = Scanner { bytes, at: 0, depth: 0 };
    let review = s.review()?;
    s.whitespace();
    (s.at == s.bytes.len()).then_some(review)
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: u32,
}

// The fields each struct has, as serde derives them; a test checks each list
// against serde's, so a field added to the model is not silently skipped here.
const REVIEW: &[&str] = &["apiVersion", "kind", "request"];
const REQUEST: &[&str] = &[
    "uid",
    "kind",
    "subResource",
    "name",
    "namespace",
    "operation",
    "object",
    "oldObject",
    "dryRun",
    "userInfo",
];
const GVK: &[&str] = &["group", "version", "kind"];
const USER_INFO: &[&str] = &["username"];
const OBJECT: &[&str] = &["metadata", "spec"];
const META: &[&str] = &["name", "generateName", "namespace", "labels", "ownerReferences"];
const OWNER: &[&str] = &["apiVersion", "kind", "name", "uid", "controller"];
const SPEC: &[&str] = &[
    "securityContext",
    "os",
    "initContainers",
    "containers",
    "ephemeralContainers",
    "imagePullSecrets",
    "nodeSelector",
    "template",
    "jobTemplate",
];
const POD_SPEC: &[&str] = &[
    "securityContext",
    "os",
    "initContainers",
    "containers",
    "ephemeralContainers",
    "imagePullSecrets",
    "nodeSelector",
];
const TEMPLATE: &[&str] = &["spec"];
const JOB_TEMPLATE: &[&str] = &["spec"];
const JOB_SPEC: &[&str] = &["template"];
const LOCAL_REF: &[&str] = &["name"];
const OS: &[&str] = &["name"];
const POD_SECURITY: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "fsGroup",
    "seccompProfile",
    "windowsOptions",
];
const CONTAINER: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "securityContext",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
];
const SECURITY: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "allowPrivilegeEscalation",
    "privileged",
    "capabilities",
    "seccompProfile",
    "windowsOptions",
];
const CAPABILITIES: &[&str] = &["add", "drop"];
const PROBE: &[&str] = &["exec"];
const EXEC: &[&str] = &["command"];
const LIFECYCLE: &[&str] = &["postStart", "preStop"];

/// The position of `name` in `fields`, at compile time.
const fn index_of(fields: &[&str], name: &str) -> usize {
    let mut i = 0;
    while i < fields.len() {
        let (a, b) = (fields[i].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut j = 0;
            while j < a.len() && a[j] == b[j] {
                j += 1;
            }
            if j == a.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("a field its list does not name");
}

/// Reads an object's fields into the struct being built: each named field by
/// its expression, any other field skipped. A field given twice makes the
/// scanner give up (serde_json rejects it). Every field of `$fields` must have
/// an arm, and every arm a field of `$fields`; both are checked at compile time.
macro_rules! fields {
    ($s:ident, $fields:ident, { $($name:literal => $read:expr),* $(,)? }) => {{
        const _: () = assert!([$($name),*].len() == $fields.len(), "one arm per field");
        const _: () = assert!($fields.len() <= 64, "a field is a bit of a u64");
        let mut seen = 0u64;
        let mut first = true;
        $s.open_object()?;
        while let Some(key) = $s.next_key(&mut first)? {
            $(if key == $name.as_bytes() {
                let bit = 1u64 << const { index_of($fields, $name) };
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                $read;
            } else)* {
                // serde_json reads every key of a struct as a string.
                if !key.is_ascii() {
                    std::str::from_utf8(key).ok()?;
                }
                $s.skip()?;
            }
        }
    }};
}

/// A reader of a struct that starts from its `Default` and sets the fields
/// the object gives (`"key" => field = read`).
macro_rules! reader {
    ($s:ident, fn $name:ident -> $ty:ident, $fields:ident { $($key:literal => $field:ident = $read:expr),* $(,)? }) => {
        fn $name(&mut $s) -> Option<$ty> {
            let mut value = $ty::default();
            fields!($s, $fields, { $($key => value.$field = $read),* });
            Some(value)
        }
    };
}

impl<'a> Scanner<'a> {
    #[inline]
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.bytes.get(self.at).copied()
    }

    #[inline]
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.peek()?;
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// A string, at its opening quote: its raw contents and whether it holds an
    /// escape. Escapes are checked as JSON defines them; raw control characters
    /// are not accepted.
    #[inline(always)]
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.at;
        let mut at = special(self.bytes, start)?;
        let mut escaped = false;
        while self.bytes[at] != b'"' {
            if self.bytes[at] != b'\\' {
                return None;
            }
            escaped = true;
            at = special(self.bytes, self.escape(at)?)?;
        }
        self.at = at + 1;
        Some((&self.bytes[start..at], escaped))
    }

    /// Past the escape at `at`, when it is one JSON defines.
    #[cold]
    fn escape(&self, at: usize) -> Option<usize> {
        match *self.bytes.get(at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
            b'u' if self.bytes.get(at + 2..at + 6)?.iter().all(u8::is_ascii_hexdigit) => Some(at + 6),
            _ => None,
        }
    }

    /// A string kept as it is written (one with an escape is left to serde_json).
    fn plain_str(&mut self) -> Option<&'a str> {
        match self.string()? {
            (text, false) => std::str::from_utf8(text).ok(),
            (_, true) => None,
        }
    }

    fn owned(&mut self) -> Option<String> {
        self.plain_str().map(str::to_owned)
    }

    fn number(&mut self) -> Option<()> {
        let b = self.bytes;
        let mut at = self.at;
        if b.get(at) == Some(&b'-') {
            at += 1;
        }
        at = match b.get(at)? {
            b'0' => at + 1,
            b'1'..=b'9' => digits(b, at + 1),
            _ => return None,
        };
        if b.get(at) == Some(&b'.') {
            let end = digits(b, at + 1);
            if end == at + 1 {
                return None;
            }
            at = end;
        }
        if let Some(b'e' | b'E') = b.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = b.get(at) {
                at += 1;
            }
            let end = digits(b, at);
            if end == at {
                return None;
            }
            at = end;
        }
        self.at = at;
        Some(())
    }

    /// Any JSON value, checked and passed over.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                self.at += 1;
                self.enter()?;
                let mut first = true;
                while self.next_raw_key(&mut first)?.is_some() {
                    self.skip()?;
                }
                Some(())
            }
            b'[' => {
                self.at += 1;
                self.enter()?;
                let mut first = true;
                while self.next_element(&mut first)? {
                    self.skip()?;
                }
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn open_object(&mut self) -> Option<()> {
        self.eat(b'{')?;
        self.enter()
    }

    /// The next key of an open object, then its colon; `Some(None)` past its
    /// end. A key with an escape is left to serde_json.
    #[inline]
    fn next_key(&mut self, first: &mut bool) -> Option<Option<&'a [u8]>> {
        match self.next_raw_key(first)? {
            Some((key, false)) => Some(Some(key)),
            Some((_, true)) => None,
            None => Some(None),
        }
    }

    /// [`Self::next_key`], escapes and all.
    #[inline]
    fn next_raw_key(&mut self, first: &mut bool) -> Option<Option<(&'a [u8], bool)>> {
        if !self.next_item(b'}', first)? {
            return Some(None);
        }
        let key = self.string()?;
        self.eat(b':')?;
        Some(Some(key))
    }

    /// Whether an open array has another element (and steps to it).
    fn next_element(&mut self, first: &mut bool) -> Option<bool> {
        self.next_item(b']', first)
    }

    /// Whether an open object or array (closed by `close`) has another item:
    /// steps over the comma before it, or past the end.
    #[inline]
    fn next_item(&mut self, close: u8, first: &mut bool) -> Option<bool> {
        let c = self.peek()?;
        if c == close {
            self.at += 1;
            self.depth -= 1;
            return Some(false);
        }
        if !std::mem::take(first) {
            if c != b',' {
                return None;
            }
            self.at += 1;
        }
        Some(true)
    }

    /// `null` as `None`, anything else by `read`.
    fn opt<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        read(self).map(Some)
    }

    fn seq<T>(&mut self, mut read: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.eat(b'[')?;
        self.enter()?;
        let mut items = Vec::new();
        let mut first = true;
        while self.next_element(&mut first)? {
            items.push(read(self)?);
        }
        Some(items)
    }

    fn strings(&mut self) -> Option<Vec<String>> {
        self.seq(Self::owned)
    }

    fn bool(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            b'f' => self.literal(b"false").map(|()| false),
            _ => None,
        }
    }

    /// A non-negative integer of at most 18 digits (anything else, serde_json reads).
    fn int(&mut self) -> Option<i64> {
        self.peek()?;
        let start = self.at;
        let end = digits(self.bytes, start);
        let len = end - start;
        if len == 0 || len > 18 || (len > 1 && self.bytes[start] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.bytes.get(end) {
            return None;
        }
        let value = std::str::from_utf8(&self.bytes[start..end]).ok()?.parse().ok()?;
        self.at = end;
        Some(value)
    }

    fn review(&mut self) -> Option<AdmissionReview> {
        let (mut api_version, mut kind, mut request) = (None, None, None);
        fields!(self, REVIEW, {
            "apiVersion" => api_version = Some(self.owned()?),
            "kind" => kind = Some(self.owned()?),
            "request" => request = self.opt(Self::request)?,
        });
        Some(AdmissionReview {
            api_version: api_version?,
            kind: kind?,
            request,
        })
    }

    fn request(&mut self) -> Option<AdmissionRequest> {
        let (mut uid, mut kind, mut operation) = (None, None, None);
        let (mut sub_resource, mut name, mut namespace) = (None, None, None);
        let (mut object, mut old_object, mut dry_run) = (None, None, None);
        let mut user_info = UserInfo::default();
        fields!(self, REQUEST, {
            "uid" => uid = Some(self.owned()?),
            "kind" => kind = Some(self.gvk()?),
            "subResource" => sub_resource = self.opt(Self::owned)?,
            "name" => name = self.opt(Self::owned)?,
            "namespace" => namespace = self.opt(Self::owned)?,
            "operation" => operation = Some(self.operation()?),
            "object" => object = self.opt(Self::object)?,
            "oldObject" => old_object = self.opt(Self::object)?,
            "dryRun" => dry_run = self.opt(Self::bool)?,
            "userInfo" => user_info = self.user_info()?,
        });
        Some(AdmissionRequest {
            uid: uid?,
            kind: kind?,
            sub_resource,
            name,
            namespace,
            operation: operation?,
            object,
            old_object,
            dry_run,
            user_info,
        })
    }

    fn gvk(&mut self) -> Option<GroupVersionKind> {
        let (mut group, mut version, mut kind) = (String::new(), String::new(), None);
        fields!(self, GVK, {
            "group" => group = self.owned()?,
            "version" => version = self.owned()?,
            "kind" => kind = Some(self.owned()?),
        });
        Some(GroupVersionKind {
            group,
            version,
            kind: kind?,
        })
    }

    fn operation(&mut self) -> Option<Operation> {
        match self.plain_str()? {
            "CREATE" => Some(Operation::Create),
            "UPDATE" => Some(Operation::Update),
            "DELETE" => Some(Operation::Delete),
            "CONNECT" => Some(Operation::Connect),
            _ => None,
        }
    }

    reader!(self, fn user_info -> UserInfo, USER_INFO {
        "username" => username = self.owned()?,
    });

    reader!(self, fn object -> ObjectShape, OBJECT {
        "metadata" => metadata = self.meta()?,
        "spec" => spec = self.opt(Self::spec)?,
    });

    reader!(self, fn meta -> ObjectMeta, META {
        "name" => name = self.opt(Self::owned)?,
        "generateName" => generate_name = self.opt(Self::owned)?,
        "namespace" => namespace = self.opt(Self::owned)?,
        "labels" => labels = self.opt(Self::string_map)?,
        "ownerReferences" => owner_references = self.opt(|s| s.seq(Self::owner))?,
    });

    /// A map of strings; a key given twice keeps its last value, as serde's map does.
    fn string_map(&mut self) -> Option<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        self.open_object()?;
        let mut first = true;
        while let Some(key) = self.next_key(&mut first)? {
            map.insert(std::str::from_utf8(key).ok()?.to_owned(), self.owned()?);
        }
        Some(map)
    }

    reader!(self, fn owner -> OwnerReference, OWNER {
        "apiVersion" => api_version = self.owned()?,
        "kind" => kind = self.owned()?,
        "name" => name = self.owned()?,
        "uid" => uid = self.owned()?,
        "controller" => controller = self.opt(Self::bool)?,
    });

    reader!(self, fn spec -> SpecShape, SPEC {
        "securityContext" => security_context = self.opt(Self::pod_security)?,
        "os" => os = self.opt(Self::os)?,
        "initContainers" => init_containers = self.opt(Self::containers)?,
        "containers" => containers = self.opt(Self::containers)?,
        "ephemeralContainers" => ephemeral_containers = self.opt(Self::containers)?,
        "imagePullSecrets" => image_pull_secrets = self.opt(|s| s.seq(Self::local_ref))?,
        "nodeSelector" => node_selector = self.opt(Self::string_map)?,
        "template" => template = self.opt(|s| s.template().map(Box::new))?,
        "jobTemplate" => job_template = self.opt(|s| s.job_template().map(Box::new))?,
    });

    reader!(self, fn template -> TemplateShape, TEMPLATE {
        "spec" => spec = self.opt(Self::pod_spec)?,
    });

    reader!(self, fn job_template -> JobTemplateShape, JOB_TEMPLATE {
        "spec" => spec = self.opt(Self::job_spec)?,
    });

    reader!(self, fn job_spec -> JobSpecShape, JOB_SPEC {
        "template" => template = self.opt(|s| s.template().map(Box::new))?,
    });

    reader!(self, fn pod_spec -> PodSpec, POD_SPEC {
        "securityContext" => security_context = self.opt(Self::pod_security)?,
        "os" => os = self.opt(Self::os)?,
        "initContainers" => init_containers = self.opt(Self::containers)?,
        "containers" => containers = self.opt(Self::containers)?,
        "ephemeralContainers" => ephemeral_containers = self.opt(Self::containers)?,
        "imagePullSecrets" => image_pull_secrets = self.opt(|s| s.seq(Self::local_ref))?,
        "nodeSelector" => node_selector = self.opt(Self::string_map)?,
    });

    reader!(self, fn local_ref -> LocalObjectReference, LOCAL_REF {
        "name" => name = self.owned()?,
    });

    reader!(self, fn os -> PodOs, OS {
        "name" => name = self.opt(Self::owned)?,
    });

    /// `seccompProfile`: only whether it is set (and not null) is kept.
    fn present(&mut self) -> Option<Option<IgnoredAny>> {
        self.opt(|s| s.skip().map(|()| IgnoredAny))
    }

    reader!(self, fn pod_security -> PodSecurityContext, POD_SECURITY {
        "runAsUser" => run_as_user = self.opt(Self::int)?,
        "runAsGroup" => run_as_group = self.opt(Self::int)?,
        "runAsNonRoot" => run_as_non_root = self.opt(Self::bool)?,
        "fsGroup" => fs_group = self.opt(Self::int)?,
        "seccompProfile" => seccomp_profile = self.present()?,
        "windowsOptions" => windows_options = self.present()?,
    });

    fn containers(&mut self) -> Option<Vec<Container>> {
        self.seq(Self::container)
    }

    reader!(self, fn container -> Container, CONTAINER {
        "name" => name = self.owned()?,
        "image" => image = self.opt(Self::owned)?,
        "command" => command = self.opt(Self::strings)?,
        "args" => args = self.opt(Self::strings)?,
        "securityContext" => security_context = self.opt(Self::security)?,
        "livenessProbe" => liveness_probe = self.opt(Self::probe)?,
        "readinessProbe" => readiness_probe = self.opt(Self::probe)?,
        "startupProbe" => startup_probe = self.opt(Self::probe)?,
        "lifecycle" => lifecycle = self.opt(Self::lifecycle)?,
    });

    reader!(self, fn security -> SecurityContext, SECURITY {
        "runAsUser" => run_as_user = self.opt(Self::int)?,
        "runAsGroup" => run_as_group = self.opt(Self::int)?,
        "runAsNonRoot" => run_as_non_root = self.opt(Self::bool)?,
        "allowPrivilegeEscalation" => allow_privilege_escalation = self.opt(Self::bool)?,
        "privileged" => privileged = self.opt(Self::bool)?,
        "capabilities" => capabilities = self.opt(Self::capabilities)?,
        "seccompProfile" => seccomp_profile = self.present()?,
        "windowsOptions" => windows_options = self.present()?,
    });

    reader!(self, fn capabilities -> Capabilities, CAPABILITIES {
        "add" => add = self.opt(Self::strings)?,
        "drop" => drop = self.opt(Self::strings)?,
    });

    reader!(self, fn probe -> Probe, PROBE {
        "exec" => exec = self.opt(Self::exec)?,
    });

    reader!(self, fn exec -> ExecAction, EXEC {
        "command" => command = self.opt(Self::strings)?,
    });

    reader!(self, fn lifecycle -> Lifecycle, LIFECYCLE {
        "postStart" => post_start = self.opt(Self::probe)?,
        "preStop" => pre_stop = self.opt(Self::probe)?,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde::de::{self, Visitor};

    /// The field names serde derives for `T`, as it hands them to a deserializer.
    fn serde_fields<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
        struct Recorder<'r>(&'r mut Vec<&'static str>);
        impl<'de> de::Deserializer<'de> for Recorder<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0.extend(fields);
                Err(de::Error::custom("recorded"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields = Vec::new();
        let _ = T::deserialize(Recorder(&mut fields));
        fields
    }

    #[test]
    fn every_struct_reads_the_fields_serde_reads() {
        let cases: Vec<(&str, Vec<&str>, &[&str])> = vec![
            ("AdmissionReview", serde_fields::<AdmissionReview>(), REVIEW),
            ("AdmissionRequest", serde_fields::<AdmissionRequest>(), REQUEST),
            ("GroupVersionKind", serde_fields::<GroupVersionKind>(), GVK),
            ("UserInfo", serde_fields::<UserInfo>(), USER_INFO),
            ("ObjectShape", serde_fields::<ObjectShape>(), OBJECT),
            ("ObjectMeta", serde_fields::<ObjectMeta>(), META),
            ("OwnerReference", serde_fields::<OwnerReference>(), OWNER),
            ("SpecShape", serde_fields::<SpecShape>(), SPEC),
            ("TemplateShape", serde_fields::<TemplateShape>(), TEMPLATE),
            ("JobTemplateShape", serde_fields::<JobTemplateShape>(), JOB_TEMPLATE),
            ("JobSpecShape", serde_fields::<JobSpecShape>(), JOB_SPEC),
            ("PodSpec", serde_fields::<PodSpec>(), POD_SPEC),
            (
                "LocalObjectReference",
                serde_fields::<LocalObjectReference>(),
                LOCAL_REF,
            ),
            ("PodOs", serde_fields::<PodOs>(), OS),
            ("PodSecurityContext", serde_fields::<PodSecurityContext>(), POD_SECURITY),
            ("Container", serde_fields::<Container>(), CONTAINER),
            ("SecurityContext", serde_fields::<SecurityContext>(), SECURITY),
            ("Capabilities", serde_fields::<Capabilities>(), CAPABILITIES),
            ("Probe", serde_fields::<Probe>(), PROBE),
            ("ExecAction", serde_fields::<ExecAction>(), EXEC),
            ("Lifecycle", serde_fields::<Lifecycle>(), LIFECYCLE),
        ];
        for (name, mut serde, ours) in cases {
            let mut ours = ours.to_vec();
            serde.sort_unstable();
            ours.sort_unstable();
            assert!(!serde.is_empty(), "{name}: serde named no fields");
            assert_eq!(
                ours, serde,
                "{name}: the one-pass reader and serde read different fields"
            );
        }
    }

    fn serde_read(text: &str) -> Result<AdmissionReview, serde_json::Error> {
        serde_json::from_str(text)
    }

    fn same(text: &str) {
        let fast = review(text.as_bytes()).unwrap_or_else(|| panic!("the one-pass reader gave up on {text}"));
        let slow = serde_read(text).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
    }

    #[test]
    fn the_reviews_of_the_test_data_read_as_serde_reads_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).unwrap();
                same(&text);
                // Compact, as the API server sends it.
                same(&serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&text).unwrap()).unwrap());
                read += 1;
            }
        }
        assert!(read >= 5, "only {read} reviews in tests/data");
    }

    const BASE: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","userInfo":{"username":"jane","groups":["a"]},"object":OBJECT}}"#;

    fn with_object(object: &str) -> String {
        BASE.replace("OBJECT", object)
    }

    #[test]
    fn every_field_of_every_kind_reads_as_serde_reads_it() {
        let container = r#"{"name":"c","image":"registry.example/app:1","command":["sh","-c"],"args":["x"],
            "securityContext":{"runAsUser":0,"runAsGroup":10,"runAsNonRoot":false,"allowPrivilegeEscalation":true,"privileged":null,
                "capabilities":{"add":["NET_ADMIN"],"drop":["ALL"]},"seccompProfile":{"type":"RuntimeDefault"}},
            "livenessProbe":{"exec":{"command":["cat","/x"]},"periodSeconds":1.5e3},"readinessProbe":{"httpGet":{"path":"/"}},
            "startupProbe":null,"lifecycle":{"postStart":{"exec":{"command":[]}},"preStop":null},"env":[{"name":"A","value":"\u00e9\n"}]}"#;
        let pod_spec = format!(
            r#"{{"securityContext":{{"runAsUser":65532,"runAsGroup":null,"runAsNonRoot":true,"fsGroup":65532,"seccompProfile":null}},
            "os":{{"name":"linux"}},"initContainers":[{container}],"containers":[{container},{{"name":"d"}}],"ephemeralContainers":[],
            "imagePullSecrets":[{{"name":"regcred"}}],"volumes":[{{"name":"v","emptyDir":{{}}}}]}}"#
        );
        let meta = r#"{"name":"web","generateName":"web-","namespace":"shop","labels":{"app":"web","app":"again","tier":""},
            "annotations":{"a\"b":"c"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-1","uid":"x","controller":true,"blockOwnerDeletion":true}]}"#;
        for object in [
            format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{meta},"spec":{pod_spec},"status":{{"phase":"Pending"}}}}"#
            ),
            format!(
                r#"{{"kind":"Deployment","metadata":{meta},"spec":{{"replicas":3,"template":{{"metadata":{{}},"spec":{pod_spec}}}}}}}"#
            ),
            format!(
                r#"{{"kind":"CronJob","metadata":{{}},"spec":{{"jobTemplate":{{"spec":{{"template":{{"spec":{pod_spec}}}}}}}}}}}"#
            ),
            r#"{"metadata":{},"spec":null}"#.to_string(),
            r#"{}"#.to_string(),
        ] {
            same(&with_object(&object));
        }
        same(r#" { "apiVersion" : "v1" , "kind" : "AdmissionReview" } "#);
        same(r#"{"apiVersion":"v1","kind":"AdmissionReview","request":null}"#);
        same(&BASE.replace(
            r#""object":OBJECT"#,
            r#""object":null,"oldObject":{},"dryRun":true,"subResource":"status","name":"n","namespace":null"#,
        ));
    }

    #[test]
    fn a_body_that_is_not_utf8_throughout_reads_as_serde_jsons_byte_wise_reader_reads_it() {
        let with = |placeholder_in: &str, byte: &[u8]| {
            let text = with_object("{}").replace(r#""operation""#, r#""options":{"note":"caf#"},"operation""#);
            let text = if placeholder_in == "uid" {
                text.replace("caf#", "cafe").replace(r#""uid":"u1""#, r#""uid":"u#""#)
            } else {
                text
            };
            let mut body = text.into_bytes();
            let at = body.iter().position(|&b| b == b'#').unwrap();
            body.splice(at..at + 1, byte.iter().copied());
            body
        };
        // A stray byte in a string nothing keeps: read, as serde_json's
        // byte-wise reader reads it (it checks only the strings it keeps).
        let skipped = with("options", b"\xe9");
        assert!(std::str::from_utf8(&skipped).is_err());
        let fast = review(&skipped).expect("read by the one-pass reader");
        let slow: AdmissionReview = serde_json::from_slice(&skipped).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        // In a string it keeps: left to serde_json, whose error it is.
        let kept = with("uid", b"\xff");
        assert!(std::str::from_utf8(&kept).is_err());
        assert!(review(&kept).is_none());
        assert_eq!(
            read(&kept).unwrap_err().to_string(),
            serde_json::from_slice::<AdmissionReview>(&kept)
                .unwrap_err()
                .to_string()
        );
    }

    #[test]
    fn what_it_does_not_read_itself_is_left_to_serde_json() {
        let pod =
            |container: &str| with_object(&format!(r#"{{"metadata":{{}},"spec":{{"containers":[{container}]}}}}"#));
        let deep = format!("{}1{}", "[".repeat(150), "]".repeat(150));
        // Valid, read the same by serde_json once the reader gives up.
        for text in [
            pod(r#"{"name":"c","command":["sh","-c","echo \"hi\""]}"#),
            pod(r#"{"name":"c","securityContext":{"runAsUser":-1}}"#),
            pod(r#"{"name":"c","securityContext":{"runAsUser":1000000000000000000}}"#),
            pod(r#"{"name":"c","securityContext":{"seccompProfile":DEEP}}"#).replace("DEEP", &deep),
            pod(r#"{"n\u0061me":"c"}"#),
            // A struct written as an array of its fields, which serde reads.
            pod(r#"["c"]"#),
            // An enum written as a map, which serde reads.
            BASE.replace(r#""operation":"CREATE""#, r#""operation":{"CREATE":null}"#)
                .replace("OBJECT", "{}"),
            // A field nothing reads, twice.
            BASE.replace(r#""uid":"u1","#, r#""uid":"u1","resource":1,"resource":2,"#)
                .replace("OBJECT", "{}"),
        ] {
            if review(text.as_bytes()).is_none() {
                let fallback = read(text.as_bytes());
                assert_eq!(format!("{fallback:?}"), format!("{:?}", serde_read(&text)), "{text}");
            } else {
                same(&text);
            }
        }
        // Not readable at all: the reader gives up, serde_json gives the error.
        for text in [
            pod(r#"{"name":"c","name":"d"}"#),
            pod(r#"{"name":"c",}"#),
            pod(r#"{"name":"c","securityContext":{"runAsUser":1.5}}"#),
            pod(r#"{"name":"c","securityContext":{"runAsUser":01}}"#),
            pod(r#"{"name":"c","env":[{"value":"a	b"}]}"#),
            pod(r#"{"name":"c","env":[{"value":"\x"}]}"#),
            pod(r#"{"name":"c","env":[{"value":"\u12G4"}]}"#),
            pod(r#"{"name":"c","ports":[1,]}"#),
            pod(r#"{"name":"c","ports":[-]}"#),
            pod(r#"{"name":"c","ports":[1.]}"#),
            pod(r#"{"name":"c","ports":[1e]}"#),
            pod(r#"{"name":"c","ready":tru}"#),
            pod(r#"{"name":null}"#),
            BASE.replace("CREATE", "MAKE").replace("OBJECT", "{}"),
            BASE.replace(
                r#","userInfo":{"username":"jane","groups":["a"]}"#,
                r#","userInfo":null"#,
            )
            .replace("OBJECT", "{}"),
            BASE.replace(r#""uid":"u1","#, "").replace("OBJECT", "{}"),
            format!("{} x", with_object("{}")),
            format!("{}}}", with_object("{}")),
            String::new(),
        ] {
            assert!(review(text.as_bytes()).is_none(), "accepted: {text}");
            assert!(serde_read(&text).is_err(), "serde_json reads it: {text}");
        }
    }
}
