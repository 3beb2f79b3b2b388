//! Which integration version an invocation runs (SPEC §2 "Version selection").

use crate::ids::IntegrationVersion;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionAvailability {
    pub version: IntegrationVersion,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionSelectionError {
    #[error("version {0} does not exist")]
    VersionNotFound(IntegrationVersion),
    #[error("version {0} exists but is disabled")]
    VersionDisabled(IntegrationVersion),
    #[error("no enabled version exists")]
    NoEnabledVersion,
}

/// 1. a named version is used if it exists and is enabled (disabled → conflict, missing → not found);
/// 2. otherwise the highest enabled version (null ranks lowest);
/// 3. nothing enabled → not found.
pub fn select_version(
    available: &[VersionAvailability],
    requested: Option<IntegrationVersion>,
) -> Result<IntegrationVersion, VersionSelectionError> {
    match requested {
        Some(wanted) => match available.iter().find(|v| v.version == wanted) {
            Some(v) if v.enabled => Ok(v.version),
            Some(v) => Err(VersionSelectionError::VersionDisabled(v.version)),
            None => Err(VersionSelectionError::VersionNotFound(wanted)),
        },
        None => available
            .iter()
            .filter(|v| v.enabled)
            .map(|v| v.version)
            .max()
            .ok_or(VersionSelectionError::NoEnabledVersion),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NULL: IntegrationVersion = IntegrationVersion::NULL;
    fn v(n: u32) -> IntegrationVersion {
        IntegrationVersion::number(n).unwrap()
    }
    fn on(version: IntegrationVersion) -> VersionAvailability {
        VersionAvailability { version, enabled: true }
    }
    fn off(version: IntegrationVersion) -> VersionAvailability {
        VersionAvailability { version, enabled: false }
    }

    #[test]
    fn only_a_null_version() {
        assert_eq!(select_version(&[on(NULL)], None), Ok(NULL));
    }

    #[test]
    fn null_and_one_picks_one() {
        assert_eq!(select_version(&[on(NULL), on(v(1))], None), Ok(v(1)));
    }

    #[test]
    fn one_and_two_picks_two() {
        assert_eq!(select_version(&[on(v(1)), on(v(2))], None), Ok(v(2)));
    }

    #[test]
    fn invoking_one_of_one_and_two() {
        assert_eq!(select_version(&[on(v(1)), on(v(2))], Some(v(1))), Ok(v(1)));
    }

    #[test]
    fn two_disabled_falls_back_to_one() {
        assert_eq!(select_version(&[on(v(1)), off(v(2))], None), Ok(v(1)));
    }

    #[test]
    fn three_disabled_picks_two() {
        assert_eq!(select_version(&[on(v(1)), on(v(2)), off(v(3))], None), Ok(v(2)));
    }

    #[test]
    fn null_enabled_with_one_and_two_disabled() {
        assert_eq!(select_version(&[on(NULL), off(v(1)), off(v(2))], None), Ok(NULL));
    }

    #[test]
    fn invoking_a_disabled_version_conflicts() {
        assert_eq!(
            select_version(&[on(v(1)), off(v(2))], Some(v(2))),
            Err(VersionSelectionError::VersionDisabled(v(2)))
        );
    }

    #[test]
    fn invoking_a_missing_version_is_not_found() {
        assert_eq!(select_version(&[on(v(1))], Some(v(7))), Err(VersionSelectionError::VersionNotFound(v(7))));
    }

    #[test]
    fn nothing_enabled_is_not_found() {
        assert_eq!(select_version(&[off(NULL), off(v(1))], None), Err(VersionSelectionError::NoEnabledVersion));
        assert_eq!(select_version(&[], None), Err(VersionSelectionError::NoEnabledVersion));
    }

    proptest! {
        /// Whatever the set, an unnamed selection is enabled and no enabled version outranks it.
        #[test]
        fn selection_is_the_highest_enabled(versions in proptest::collection::btree_map(0u32..6, any::<bool>(), 0..6)) {
            let available: Vec<_> = versions.iter().map(|(n, e)| VersionAvailability {
                version: if *n == 0 { NULL } else { v(*n) }, enabled: *e }).collect();
            match select_version(&available, None) {
                Ok(chosen) => {
                    prop_assert!(available.iter().any(|a| a.version == chosen && a.enabled));
                    prop_assert!(available.iter().all(|a| !a.enabled || a.version <= chosen));
                }
                Err(_) => prop_assert!(available.iter().all(|a| !a.enabled)),
            }
        }
    }
}
