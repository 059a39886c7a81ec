//! Parsing of `/etc/group` text: the groups that list one user as a member.
//!
//! Owns: the group line format (4 colon-separated fields, the last a comma list of member
//! names; blank, `#` comment and NIS `+`/`-` lines skipped) and membership as `initgroups`,
//! `su` and `docker exec --user` see it: by name in the member list. It works on text only and
//! must never open files. A malformed line is never an error: when it lists the user it is
//! skipped with a note, otherwise silently.

use super::GroupEntry;

/// The groups listing `username`, in file order, each gid once; and a note per line that lists
/// the user but could not be used.
pub(crate) fn member_of(text: &str, username: &str) -> (Vec<GroupEntry>, Vec<String>) {
    let mut groups: Vec<GroupEntry> = Vec::new();
    let mut notes = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', '+', '-']) {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let Some(members) = fields.last() else {
            continue;
        };
        if !members.split(',').any(|m| m.trim() == username) {
            continue;
        }
        let [name, _password, gid, _members] = fields[..] else {
            notes.push(format!(
                "/etc/group line {}: expected 4 colon-separated fields, found {}; its group is not given to {username:?}",
                index + 1,
                fields.len()
            ));
            continue;
        };
        let Ok(gid) = gid.parse::<u32>() else {
            notes.push(format!(
                "/etc/group line {}: gid {gid:?} of group {name:?} is not a number; the group is not given to {username:?}",
                index + 1
            ));
            continue;
        };
        if groups.iter().all(|g| g.gid != gid) {
            groups.push(GroupEntry {
                name: name.to_owned(),
                gid,
            });
        }
    }
    (groups, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
root:x:0:
sudo:x:27:alice,coder

+nisgroup:::coder
-other:::coder
docker:x:102: coder
coderish:x:500:coder2,xcoder
broken:x:abc:coder
short:x:coder
again:x:27:coder
users:x:100:
";

    fn gids(text: &str, user: &str) -> Vec<u32> {
        member_of(text, user).0.iter().map(|g| g.gid).collect()
    }

    #[test]
    fn groups_listing_the_user_in_file_order_each_gid_once() {
        let (groups, _) = member_of(TEXT, "coder");
        assert_eq!(
            groups,
            [
                GroupEntry {
                    name: "sudo".into(),
                    gid: 27
                },
                GroupEntry {
                    name: "docker".into(),
                    gid: 102
                },
            ]
        );
        assert_eq!(gids(TEXT, "alice"), [27]);
    }

    #[test]
    fn names_match_whole_and_nis_lines_never() {
        assert!(gids(TEXT, "code").is_empty());
        assert!(gids(TEXT, "nobody").is_empty());
        assert!(gids("", "coder").is_empty());
    }

    #[test]
    fn a_malformed_line_listing_the_user_is_skipped_with_a_note_naming_the_line() {
        let (_, notes) = member_of(TEXT, "coder");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("line 9") && notes[0].contains("\"abc\""));
        assert!(notes[1].contains("line 10") && notes[1].contains("found 3"));
        assert!(member_of(TEXT, "alice").1.is_empty());
    }
}
