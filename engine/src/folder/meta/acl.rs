//! POSIX ACLs as Linux stores them in the `system.posix_acl_access` and
//! `system.posix_acl_default` extended attributes: a 4-byte version (2), then entries
//! of a 2-byte tag, 2-byte permissions and 4-byte id, little-endian. Named-user and
//! named-group entries carry a uid or gid, which is mapped by name like an owner.

/// The two extended attributes that hold POSIX ACLs.
pub const ACL_XATTRS: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];

const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;
/// `ACL_USER`: a named user; its id is a uid.
const TAG_USER: u16 = 0x02;
/// `ACL_GROUP`: a named group; its id is a gid.
const TAG_GROUP: u16 = 0x08;

/// Whether `name` is one of the ACL attributes.
pub fn is_acl(name: &[u8]) -> bool {
    ACL_XATTRS.contains(&name)
}

/// The ids the named entries of an ACL value carry: `(is_group, id)`. `None` when the
/// value is not a well-formed ACL.
pub fn qualifiers(value: &[u8]) -> Option<Vec<(bool, u32)>> {
    if value.len() < HEADER || !(value.len() - HEADER).is_multiple_of(ENTRY) {
        return None;
    }
    if u32::from_le_bytes(value[..HEADER].try_into().ok()?) != VERSION {
        return None;
    }
    let mut out = Vec::new();
    for entry in value[HEADER..].chunks_exact(ENTRY) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        match tag {
            TAG_USER => out.push((false, id)),
            TAG_GROUP => out.push((true, id)),
            _ => {}
        }
    }
    Some(out)
}

/// `value` with each named entry's id replaced by `map(is_group, id)`. A value that is
/// not a well-formed ACL is returned as it is.
pub fn map_ids(value: &[u8], mut map: impl FnMut(bool, u32) -> u32) -> Vec<u8> {
    if qualifiers(value).is_none() {
        return value.to_vec();
    }
    let mut out = value.to_vec();
    for entry in out[HEADER..].chunks_exact_mut(ENTRY) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let group = match tag {
            TAG_USER => false,
            TAG_GROUP => true,
            _ => continue,
        };
        let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        entry[4..8].copy_from_slice(&map(group, id).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            out.extend(tag.to_le_bytes());
            out.extend(perm.to_le_bytes());
            out.extend(id.to_le_bytes());
        }
        out
    }

    #[test]
    fn named_entries_are_found_and_mapped() {
        let undefined = u32::MAX;
        let value = acl(&[
            (0x01, 6, undefined),
            (TAG_USER, 6, 1001),
            (0x04, 4, undefined),
            (TAG_GROUP, 4, 1002),
            (0x10, 6, undefined),
            (0x20, 4, undefined),
        ]);
        assert_eq!(qualifiers(&value), Some(vec![(false, 1001), (true, 1002)]));
        let mapped = map_ids(&value, |group, id| if group { id + 10 } else { id + 1 });
        assert_eq!(qualifiers(&mapped), Some(vec![(false, 1002), (true, 1012)]));
        assert_eq!(qualifiers(b"junk"), None);
        assert_eq!(map_ids(b"junk", |_, id| id), b"junk".to_vec());
    }
}
