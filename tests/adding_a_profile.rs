//! docs/adding-a-profile.md, followed: the example profile the guide builds
//! is `src/profiles/example/` exactly as the guide shows it, registered by
//! the line and the cargo feature the guide shows. Built with that feature
//! (`cargo test --features example --test adding_a_profile`), the agent
//! registers with it against a loopback double that checks what it gets.

use std::path::PathBuf;

const GUIDE: &str = "docs/adding-a-profile.md";

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The code blocks of the guide that follow `<!-- MARK: PATH -->`, with
/// their paths.
fn blocks(guide: &str, mark: &str) -> Vec<(String, String)> {
    let opening = format!("<!-- {mark}: ");
    guide
        .split(&opening)
        .skip(1)
        .map(|rest| {
            let (path, rest) = rest.split_once(" -->").expect("an unclosed mark");
            let (_, rest) = rest
                .split_once("```")
                .expect("no code block after the mark");
            let (_, rest) = rest.split_once('\n').unwrap();
            let (block, _) = rest.split_once("```").expect("an unclosed code block");
            (path.to_string(), block.to_string())
        })
        .collect()
}

#[test]
fn the_example_profile_is_what_the_guide_shows() {
    let guide = read(GUIDE);
    let files = blocks(&guide, "file");
    let names: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(names, ["src/profiles/example/mod.rs"]);
    for (path, block) in &files {
        assert!(
            *block == read(path),
            "{GUIDE} shows {path} otherwise than it is: copy it into the guide"
        );
    }
    let lines = blocks(&guide, "lines of");
    let names: Vec<&str> = lines.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(names, ["src/profiles/mod.rs", "Cargo.toml"]);
    for (path, block) in &lines {
        let text = read(path);
        for line in block.lines() {
            assert!(
                text.lines().any(|l| l.trim() == line.trim()),
                "{GUIDE} shows {line:?}, which {path} does not have"
            );
        }
    }
}

/// The agent with the example profile, against a loopback double.
#[cfg(feature = "example")]
mod registers {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;
    use std::sync::{Arc, Mutex};

    /// A loopback service that records each request (line and body) and
    /// answers each with the next of its replies.
    struct Service {
        url: String,
        requests: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    }

    impl Service {
        fn start(replies: &[(u16, &str)]) -> Service {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let (recorded, replies) = (requests.clone(), replies.to_vec());
            let replies: Vec<(u16, String)> = replies
                .into_iter()
                .map(|(c, b)| (c, b.to_string()))
                .collect();
            std::thread::spawn(move || {
                for ((code, body), stream) in replies.into_iter().zip(listener.incoming()) {
                    let mut stream = BufReader::new(stream.unwrap());
                    let request = read_request(&mut stream);
                    recorded.lock().unwrap().push(request);
                    let answer = format!(
                        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    stream.get_mut().write_all(answer.as_bytes()).unwrap();
                }
            });
            Service { url, requests }
        }

        fn requests(&self) -> Vec<(String, serde_json::Value)> {
            self.requests.lock().unwrap().clone()
        }
    }

    /// The request line and the JSON body of one request.
    fn read_request(stream: &mut impl BufRead) -> (String, serde_json::Value) {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            head.push(line.trim().to_string());
        }
        let length: usize = head
            .iter()
            .find_map(|h| {
                h.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        stream.read_exact(&mut body).unwrap();
        (head[0].clone(), serde_json::from_slice(&body).unwrap())
    }

    /// A device root with a host name.
    fn device() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/hostname"), "board-7\n").unwrap();
        root
    }

    fn agent(root: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmp-device-register"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .args(["--profile", "example", "--json", "--root"])
            .arg(root);
        cmd
    }

    fn run(mut cmd: Command) -> (i32, serde_json::Value, String) {
        let output = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let json = serde_json::from_slice(&output.stdout).unwrap_or_default();
        (output.status.code().unwrap(), json, stderr)
    }

    /// `name mode` of every entry of a directory.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap())
                    .map(|e| format!("{} {:o}", e.file_name().to_string_lossy(), mode(&e.path())))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn registers_under_the_host_name_and_keeps_the_answer() {
        let service = Service::start(&[(200, r#"{"deviceId": "dev-1"}"#)]);
        let root = device();
        let url = format!("{}/register", service.url);
        let registering = |extra: &[&str]| {
            let mut cmd = agent(root.path());
            cmd.args(["--example-url", &url]).args(extra);
            run(cmd)
        };
        let (code, json, stderr) = registering(&[]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(json["status"], "registered", "{json}");
        assert_eq!(json["deviceId"], "dev-1", "{json}");
        assert_eq!(
            service.requests(),
            [(
                "POST /register HTTP/1.1".to_string(),
                serde_json::json!({"name": "board-7"})
            )]
        );
        let state = root.path().join("var/lib/example");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(listing(&state), ["device.json 644"]);
        let stored: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(state.join("device.json")).unwrap())
                .unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"name": "board-7", "deviceId": "dev-1"})
        );

        // Registered: a technician is told so, the boot unit succeeds, and
        // neither asks the service again.
        let (code, _, stderr) = registering(&[]);
        assert_eq!(code, 3, "{stderr}");
        let (code, json, stderr) = registering(&["--boot"]);
        assert_eq!(
            (code, &json["status"]),
            (0, &"already-registered".into()),
            "{stderr}"
        );
        assert_eq!(service.requests().len(), 1);

        // --status reads what the profile stored.
        let (code, json, stderr) = registering(&["--status"]);
        assert_eq!(code, 0, "{stderr}");
        let profiles = json["profiles"].as_array().unwrap();
        let example = profiles.iter().find(|p| p["profile"] == "example").unwrap();
        assert_eq!(example["state"], "registered", "{json}");
        assert_eq!(
            (&example["id"], &example["name"]),
            (&"dev-1".into(), &"board-7".into()),
            "{json}"
        );
    }

    #[test]
    fn flag_before_environment_before_config_file_before_device_file() {
        let service = Service::start(&[(200, r#"{"deviceId": "a"}"#); 3]);
        let config = |root: &Path| {
            let file = format!(
                "[example]\nurl = \"{}/file\"\nname = \"from-file\"\n",
                service.url
            );
            std::fs::write(root.join("etc/lmp-device-register.toml"), file).unwrap();
        };
        let url = |path: &str| format!("{}/{path}", service.url);
        for (flag, env) in [(true, true), (false, true), (false, false)] {
            let root = device();
            config(root.path());
            let mut cmd = agent(root.path());
            if flag {
                cmd.args(["--example-url", &url("flag")]);
            }
            if env {
                cmd.env("EXAMPLE_URL", url("env"));
            }
            let (code, _, stderr) = run(cmd);
            assert_eq!(code, 0, "{stderr}");
        }
        let seen: Vec<(String, serde_json::Value)> = service.requests();
        let expected = |path: &str| {
            (
                format!("POST /{path} HTTP/1.1"),
                serde_json::json!({"name": "from-file"}),
            )
        };
        assert_eq!(seen, [expected("flag"), expected("env"), expected("file")]);
    }

    #[test]
    fn every_missing_setting_is_reported_at_once_and_nothing_is_left() {
        let root = tempfile::tempdir().unwrap();
        let (code, json, stderr) = run(agent(root.path()));
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(json["kind"], "config");
        assert!(stderr.contains("2 configuration problems"), "{stderr}");
        assert!(
            stderr.contains("missing example URL: pass --example-url, set EXAMPLE_URL"),
            "{stderr}"
        );
        assert!(stderr.contains("missing name"), "{stderr}");
        assert!(stderr.contains("etc/hostname"), "{stderr}");
        assert_eq!(listing(root.path()), Vec::<String>::new());
    }
}
