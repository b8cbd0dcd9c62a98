//! The container user: uid, gid and supplementary groups from the CRI security context or the
//! image's `User`, resolved against the rootfs's `/etc/passwd` and `/etc/group` (pure functions
//! over the file texts; reading them confined to the rootfs is in `spec::read_rootfs_file`).

/// One `/etc/passwd` line: `name:password:uid:gid:gecos:home:shell`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One `/etc/group` line: `name:password:gid:member,member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses passwd(5), skipping comments and malformed lines (as libc's getpwent does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).copied().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// Parses group(5), skipping comments and malformed lines.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Who the container runs as, as the kubelet says it (CRI `LinuxContainerSecurityContext`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserRequest {
    /// `run_as_user`.
    pub uid: Option<u32>,
    /// `run_as_username` (used when `uid` is not set).
    pub username: Option<String>,
    /// `run_as_group`.
    pub gid: Option<u32>,
    /// `supplemental_groups`.
    pub supplemental_groups: Vec<u32>,
    /// The image config's `User` (`name`, `uid`, `name:group`, `uid:gid`, ...), used when
    /// neither `uid` nor `username` is set.
    pub image_user: String,
}

/// The resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Primary gid first, then groups listing the user as a member, then the requested
    /// supplemental groups; no duplicates.
    pub additional_gids: Vec<u32>,
    /// The user's home directory from passwd, `/` when unknown.
    pub home: String,
}

/// A user or group name that the rootfs does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
}

/// Resolves `req` against the rootfs's passwd and group entries.
pub fn resolve_user(
    req: &UserRequest,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<ResolvedUser, UserError> {
    let by_name = |name: &str| passwd.iter().find(|p| p.name == name);
    let by_uid = |uid: u32| passwd.iter().find(|p| p.uid == uid);

    // (uid, gid from passwd or the image's group part, passwd entry)
    let (uid, mut gid, entry) = if let Some(uid) = req.uid {
        let e = by_uid(uid);
        (uid, e.map_or(0, |e| e.gid), e)
    } else if let Some(name) = req.username.as_deref().filter(|n| !n.is_empty()) {
        let e = by_name(name).ok_or_else(|| UserError::UnknownUser(name.to_string()))?;
        (e.uid, e.gid, Some(e))
    } else {
        let (user, group) = match req.image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (req.image_user.as_str(), None),
        };
        let (uid, gid, entry) = if user.is_empty() {
            (0, by_uid(0).map_or(0, |e| e.gid), by_uid(0))
        } else if let Ok(uid) = user.parse::<u32>() {
            let e = by_uid(uid);
            (uid, e.map_or(0, |e| e.gid), e)
        } else {
            let e = by_name(user).ok_or_else(|| UserError::UnknownUser(user.to_string()))?;
            (e.uid, e.gid, Some(e))
        };
        let gid = match group.filter(|g| !g.is_empty()) {
            None => gid,
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    groups
                        .iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?
                        .gid
                }
            },
        };
        (uid, gid, entry)
    };
    if let Some(g) = req.gid {
        gid = g;
    }

    let mut additional = vec![gid];
    if let Some(e) = entry {
        for g in groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == &e.name))
        {
            if !additional.contains(&g.gid) {
                additional.push(g.gid);
            }
        }
    }
    for g in &req.supplemental_groups {
        if !additional.contains(g) {
            additional.push(*g);
        }
    }
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string());
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# comment
daemon:x:1:1::/usr/sbin:/bin/false
app:x:1000:1000:App:/home/app:/bin/sh
broken line
nobody:x:65534:65534::/nonexistent:/bin/false
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
app:x:1000:
audio:x:29:app, daemon
staff:x:50:
";

    fn resolve(req: UserRequest) -> Result<ResolvedUser, UserError> {
        resolve_user(&req, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn parses_files() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 4);
        assert_eq!(p[2].home, "/home/app");
        let g = parse_group(GROUP);
        assert_eq!(g[3].members, vec!["app".to_string(), "daemon".to_string()]);
    }

    #[test]
    fn default_is_root_with_member_groups() {
        let u = resolve(UserRequest::default()).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.additional_gids, vec![0, 10]);
    }

    #[test]
    fn uid_from_config_takes_gid_and_groups_from_passwd() {
        let u = resolve(UserRequest {
            uid: Some(1000),
            supplemental_groups: vec![50, 10],
            ..Default::default()
        })
        .unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![1000, 10, 29, 50]);
    }

    #[test]
    fn unknown_uid_is_fine_and_run_as_group_wins() {
        let u = resolve(UserRequest {
            uid: Some(4242),
            gid: Some(77),
            image_user: "app".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 77, "/"));
        assert_eq!(u.additional_gids, vec![77]);
    }

    #[test]
    fn username_and_image_user_forms() {
        let u = resolve(UserRequest {
            username: Some("app".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        let img = |s: &str| {
            resolve(UserRequest {
                image_user: s.into(),
                ..Default::default()
            })
        };
        assert_eq!(img("app:staff").unwrap().gid, 50);
        assert_eq!(img("1000:7").unwrap().gid, 7);
        assert_eq!(img("daemon").unwrap().uid, 1);
        assert_eq!(img("5:5").unwrap().additional_gids, vec![5]);
        assert_eq!(img("ghost"), Err(UserError::UnknownUser("ghost".into())));
        assert_eq!(
            img("app:ghosts"),
            Err(UserError::UnknownGroup("ghosts".into()))
        );
        assert_eq!(
            resolve(UserRequest {
                username: Some("ghost".into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string(),
            "user \"ghost\" not found in the image's /etc/passwd"
        );
    }
}
