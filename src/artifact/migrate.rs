//! Files of older formats, brought to today's as they are read, so that nothing a user saved is
//! lost.
//!
//! - Format 1 named the MLP's arrays `w1`, `b1`, `w2`, `b2` (and the same after `adam.m.` and
//!   `adam.v.` in checkpoints); format 2 names every parameter by its module path
//!   ([`crate::model::MLP_PARAMETERS`]). The values and their layout are the same.

use crate::model::{Array, MLP_PARAMETERS};

/// Format 1's names of the MLP's parameters, in [`MLP_PARAMETERS`] order.
const FORMAT_1_NAMES: [&str; 4] = ["w1", "b1", "w2", "b2"];

/// Renames the arrays of a file of format `version` to today's names.
pub(crate) fn upgrade_arrays(version: u32, arrays: &mut [Array]) {
    if version >= 2 {
        return;
    }
    for array in arrays {
        // The name's last part after any `adam.m.` prefix.
        let (prefix, last) = match array.name.rfind('.') {
            Some(dot) => array.name.split_at(dot + 1),
            None => ("", array.name.as_str()),
        };
        if let Some(at) = FORMAT_1_NAMES.iter().position(|n| *n == last) {
            array.name = format!("{prefix}{}", MLP_PARAMETERS[at]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(version: u32, names: &[&str]) -> Vec<String> {
        let mut arrays: Vec<Array> = names
            .iter()
            .map(|n| Array::new(n, vec![0], vec![]))
            .collect();
        upgrade_arrays(version, &mut arrays);
        arrays.into_iter().map(|a| a.name).collect()
    }

    #[test]
    fn format_1_names_become_module_paths() {
        assert_eq!(
            names(1, &["w1", "b1", "adam.m.w2", "adam.v.b2", "other"]),
            [
                "hidden.weight",
                "hidden.bias",
                "adam.m.output.weight",
                "adam.v.output.bias",
                "other"
            ]
        );
        // Today's files are left as they are, whatever their names.
        assert_eq!(names(2, &["w1"]), ["w1"]);
    }
}
