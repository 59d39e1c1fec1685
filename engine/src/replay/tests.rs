//! Unit tests of `replay`.

use super::*;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

    /// A damaged journal is an error, never a panic; a sound one reads back whole.
    #[test]
    fn arbitrary_journal_bytes_decode_or_fail_cleanly(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
    ) {
        if let Ok(touched) = decode_journal(&bytes) {
            let again = bincode::encode_to_vec(&touched, bincode_config()).unwrap();
            proptest::prop_assert_eq!(decode_journal(&again).unwrap(), touched);
        }
    }
}

#[test]
fn a_journal_with_a_huge_length_is_refused() {
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b'a']);
    assert!(decode_journal(&bytes).is_err());
    let paths = vec![RelPath::new("a/b").unwrap(), RelPath::new("c").unwrap()];
    let encoded = bincode::encode_to_vec(&paths, bincode_config()).unwrap();
    assert_eq!(decode_journal(&encoded).unwrap(), paths);
}
