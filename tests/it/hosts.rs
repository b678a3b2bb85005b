//! `doctor --fix` on nsswitch.conf: only the sandbox's own file, never /etc's.

use super::util::*;

fn run(sb: &Sandbox, args: &[&str]) -> (bool, String, String) {
    let out = sb.wharf(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn doctor_fix_edits_only_the_nsswitch_conf_it_is_pointed_at() {
    let sb = Sandbox::new();
    let nss = sb.nsswitch_file();
    let original = "passwd: files\nhosts:          files mdns4_minimal [NOTFOUND=return] dns\n";
    std::fs::write(&nss, original).unwrap();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(sb.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("nsswitch"))
            .collect();
        names.sort();
        names
    };

    let (_, out, _) = run(&sb, &["doctor"]);
    assert_eq!(
        std::fs::read_to_string(&nss).unwrap(),
        original,
        "doctor alone writes nothing"
    );
    if out.contains("the system resolver maps *.localhost to loopback") {
        eprintln!("skipped: this machine resolves *.localhost already; --fix has nothing to do");
        return;
    }
    let (_, out, err) = run(&sb, &["doctor", "--fix", "--dry-run"]);
    assert_eq!(
        std::fs::read_to_string(&nss).unwrap(),
        original,
        "--dry-run: {out}{err}"
    );
    assert_eq!(files(), ["nsswitch.conf"]);

    let library = ["/lib", "/usr/lib", "/lib64", "/usr/lib64"]
        .iter()
        .any(|d| {
            std::path::Path::new(d)
                .join("libnss_myhostname.so.2")
                .exists()
                || std::fs::read_dir(d)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| e.path().join("libnss_myhostname.so.2").exists())
        });
    let (_, out, err) = run(&sb, &["doctor", "--fix"]);
    if library {
        assert!(out.contains("added `myhostname`"), "{out}{err}");
        let now = std::fs::read_to_string(&nss).unwrap();
        assert_eq!(now, original.replace("] dns", "] myhostname dns"));
        let backups = files();
        assert_eq!(backups.len(), 2, "{backups:?}");
        assert_eq!(
            std::fs::read_to_string(sb.dir.path().join(&backups[1])).unwrap(),
            original
        );
        assert!(out.contains("to undo: cp "), "{out}{err}");
    } else {
        assert!(
            out.contains("install the myhostname module") && out.contains("wharf hosts sync"),
            "{out}"
        );
        assert!(
            out.contains("nothing here that wharf can fix itself"),
            "{out}{err}"
        );
        assert_eq!(std::fs::read_to_string(&nss).unwrap(), original);
        assert_eq!(files(), ["nsswitch.conf"]);
    }
}
