//! Interactive exec and attach against runc + conmon on the real kernel (root).
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{Container, World};
use oci::rootfs::Overlay;
use oci::spec;
use oci::stream::{BoxRead, ProcessIo, WindowSize};
use oci::{CreateRequest, RuntimeError};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

const SECS: Duration = Duration::from_secs(20);

/// A client output stream collecting what it is sent.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn stdin_of(bytes: &[u8]) -> Option<BoxRead> {
    Some(Box::new(std::io::Cursor::new(bytes.to_vec())))
}

fn pipes(stdin: Option<BoxRead>) -> (ProcessIo, Sink, Sink) {
    let (out, err) = (Sink::default(), Sink::default());
    let io = ProcessIo {
        tty: false,
        stdin,
        stdout: Some(Box::new(out.clone())),
        stderr: Some(Box::new(err.clone())),
        resize: None,
    };
    (io, out, err)
}

fn process(c: &Container, args: &[&str]) -> oci::spec::oci::Process {
    let mut p = c.spec.as_ref().unwrap().process.clone();
    p.args = args.iter().map(|s| s.to_string()).collect();
    p
}

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(SECS, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {SECS:?}"))
}

async fn running(w: &World, id: &str) -> bool {
    w.runtime
        .state(id)
        .await
        .unwrap()
        .is_some_and(|s| s.status == "running")
}

/// Like `World::run`, with the stdin flags attach needs.
async fn run_with_stdin(w: &World, s: spec::ContainerSpec, stdin_once: bool) -> Container {
    let id = s.id.clone();
    let bundle = w.dir.path().join(&id);
    let overlay = Overlay::in_dir(&bundle.join("rootfs"), vec![w.layer.clone()], false);
    let mut c = Container {
        id: id.clone(),
        bundle: bundle.clone(),
        log: bundle.join("logs/ctr.log"),
        overlay: overlay.clone(),
        runc_root: w.runtime.config().runc_root.clone(),
        cgroup: spec::cgroup_path(&s.cgroup_parent, &id),
        cgroup_parent: s.cgroup_parent.clone(),
        created: None,
        spec: None,
    };
    overlay.mount().unwrap();
    let generated = spec::generate(&s, &w.host).unwrap();
    let req = CreateRequest {
        id: &id,
        bundle: &bundle,
        spec: &generated.spec,
        log_path: &c.log,
        stdin: true,
        stdin_once,
    };
    c.created = Some(w.runtime.create(&req).await.unwrap());
    c.spec = Some(generated.spec);
    w.runtime.start(&id).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_output_exit_code_and_stdin_eof() {
    let w = World::new();
    let id = common::unique_id("sx");
    let c = w.run(w.spec(&id, &["sleep", "1000"])).await;

    let (io, out, err) = pipes(None);
    let code = bounded(
        "echo",
        w.runtime
            .exec_interactive(&id, &c.bundle, &process(&c, &["echo", "hi"]), io),
    )
    .await
    .unwrap();
    assert_eq!(
        (code, out.text(), err.text()),
        (0, "hi\n".into(), String::new())
    );

    let (io, out, err) = pipes(None);
    let p = process(&c, &["sh", "-c", "echo err >&2; exit 7"]);
    let code = bounded("exit 7", w.runtime.exec_interactive(&id, &c.bundle, &p, io))
        .await
        .unwrap();
    assert_eq!(
        (code, out.text(), err.text()),
        (7, String::new(), "err\n".into())
    );

    // cat only exits when the client's EOF reaches it.
    let (io, out, _) = pipes(stdin_of(b"abc\ndef\n"));
    let p = process(&c, &["sh", "-c", "cat; echo eof"]);
    let code = bounded("cat", w.runtime.exec_interactive(&id, &c.bundle, &p, io))
        .await
        .unwrap();
    assert_eq!((code, out.text()), (0, "abc\ndef\neof\n".into()));

    // No stdin from the client: /dev/null.
    let (io, out, _) = pipes(None);
    let p = process(&c, &["sh", "-c", "cat; echo empty"]);
    let code = bounded("cat", w.runtime.exec_interactive(&id, &c.bundle, &p, io))
        .await
        .unwrap();
    assert_eq!((code, out.text()), (0, "empty\n".into()));

    // Killed by a signal: 128+signal.
    let (io, _, _) = pipes(None);
    let p = process(&c, &["sh", "-c", "kill -9 $$"]);
    let code = bounded("kill", w.runtime.exec_interactive(&id, &c.bundle, &p, io))
        .await
        .unwrap();
    assert_eq!(code, 137);

    // runc cannot start it: an error naming the container and runc's reason.
    let (io, _, _) = pipes(None);
    let p = process(&c, &["/nonexistent"]);
    match bounded(
        "missing",
        w.runtime.exec_interactive(&id, &c.bundle, &p, io),
    )
    .await
    {
        Err(e @ RuntimeError::ExecStart { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&id) && msg.contains("nonexistent"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing left behind in the bundle.
    let left: Vec<_> = std::fs::read_dir(&c.bundle)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec-stream-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_exec_applies_the_first_size_and_later_resizes() {
    let w = World::new();
    let id = common::unique_id("tty");
    let c = w.run(w.spec(&id, &["sleep", "1000"])).await;

    // A size sent before the exec starts.
    let (tx, rx) = mpsc::channel(4);
    tx.send(WindowSize {
        width: 100,
        height: 30,
    })
    .await
    .unwrap();
    let out = Sink::default();
    let io = ProcessIo {
        tty: true,
        stdin: None,
        stdout: Some(Box::new(out.clone())),
        stderr: None,
        resize: Some(rx),
    };
    let code = bounded(
        "stty",
        w.runtime
            .exec_interactive(&id, &c.bundle, &process(&c, &["stty", "size"]), io),
    )
    .await
    .unwrap();
    assert_eq!((code, out.text().trim()), (0, "30 100"));

    // A resize while it runs: the shell reports its size for every line until it sees the
    // new one.
    let (tx, rx) = mpsc::channel(4);
    let (client, stdin) = tokio::io::duplex(1024);
    let out = Sink::default();
    let io = ProcessIo {
        tty: true,
        stdin: Some(Box::new(stdin)),
        stdout: Some(Box::new(out.clone())),
        stderr: None,
        resize: Some(rx),
    };
    tx.send(WindowSize {
        width: 20,
        height: 10,
    })
    .await
    .unwrap();
    let p = process(
        &c,
        &[
            "sh",
            "-c",
            "echo ready; while read x; do s=$(stty size); echo \"size $s\"; [ \"$s\" = '40 120' ] && exit 3; done",
        ],
    );
    let exec = w.runtime.exec_interactive(&id, &c.bundle, &p, io);
    let drive = async {
        use tokio::io::AsyncWriteExt;
        let mut client = client;
        while !out.text().contains("ready") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(WindowSize {
            width: 120,
            height: 40,
        })
        .await
        .unwrap();
        loop {
            if client.write_all(b"\r").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::future::pending::<()>().await;
    };
    let code = bounded("resize", async {
        tokio::select! {
            r = exec => r,
            () = drive => unreachable!(),
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 3, "{}", out.text());
    assert!(out.text().contains("size 40 120"), "{}", out.text());
}

/// The pid of the process a running interactive exec started (from runc's pid file).
async fn exec_pid(bundle: &Path) -> i32 {
    let deadline = Instant::now() + SECS;
    loop {
        for e in std::fs::read_dir(bundle).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("exec-stream-")
                && name.ends_with(".pid")
                && let Some(pid) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no exec pid file appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_gone(pid: i32) {
    let deadline = Instant::now() + SECS;
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still exists after the exec was dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_exec_kills_only_its_process() {
    let w = World::new();
    let id = common::unique_id("drop");
    let c = w.run(w.spec(&id, &["sleep", "1000"])).await;
    for tty in [false, true] {
        let (mut io, _, _) = pipes(None);
        io.tty = tty;
        if tty {
            io.stderr = None;
        }
        let p = process(&c, &["sh", "-c", "sleep 1000; echo never"]);
        let exec = w.runtime.exec_interactive(&id, &c.bundle, &p, io);
        let pid = tokio::select! {
            r = exec => panic!("exec ended: {r:?}"),
            pid = exec_pid(&c.bundle) => pid,
        };
        // The select dropped the exec future.
        wait_gone(pid).await;
        assert!(
            running(&w, &id).await,
            "the container must keep running (tty {tty})"
        );
    }
    // The pid and process files are removed by the reaping task.
    let deadline = Instant::now() + SECS;
    loop {
        let left = std::fs::read_dir(&c.bundle)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("exec-stream-"))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} exec files left in the bundle"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_reads_output_and_dropping_it_leaves_the_container_running() {
    let w = World::new();
    let id = common::unique_id("att");
    let c = w
        .run(w.spec(
            &id,
            &[
                "sh",
                "-c",
                "i=0; while true; do echo line$i; echo err$i >&2; i=$((i+1)); sleep 0.05; done",
            ],
        ))
        .await;
    let (io, out, err) = pipes(None);
    let attach = w.runtime.attach(&id, &c.bundle, io, false);
    let seen = async {
        while !(out.text().lines().count() >= 3 && err.text().lines().count() >= 3) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    bounded("attach output", async {
        tokio::select! {
            r = attach => panic!("attach ended: {r:?}"),
            () = seen => {}
        }
    })
    .await;
    let lines: Vec<String> = out.text().lines().map(String::from).collect();
    assert!(lines.iter().all(|l| l.starts_with("line")), "{lines:?}");
    assert!(
        err.text().lines().all(|l| l.starts_with("err")),
        "{}",
        err.text()
    );
    assert!(
        running(&w, &id).await,
        "dropping the attach must leave the container running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_stdin_once_closes_stdin_and_returns_at_exit() {
    let w = World::new();
    let id = common::unique_id("ain");
    let c = run_with_stdin(&w, w.spec(&id, &["sh", "-c", "cat; echo done >&2"]), true).await;
    let (io, out, err) = pipes(stdin_of(b"hello\n"));
    bounded("attach", w.runtime.attach(&id, &c.bundle, io, true))
        .await
        .unwrap();
    assert_eq!(
        (out.text(), err.text()),
        ("hello\n".into(), "done\n".into())
    );
    assert_eq!(c.wait_exit(SECS), 0);
    // Attaching to an exited container is a precise error.
    let (io, _, _) = pipes(None);
    match w.runtime.attach(&id, &c.bundle, io, true).await {
        Err(RuntimeError::NotRunning(x)) => assert_eq!(x, id),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_attach_resizes_through_conmon() {
    let w = World::new();
    let id = common::unique_id("atty");
    let mut s = w.spec(
        &id,
        &["sh", "-c", "while read x; do s=$(stty size); echo \"size $s\"; [ \"$s\" = '30 100' ] && exit 0; done"],
    );
    s.tty = true;
    s.stdin = true;
    let c = run_with_stdin(&w, s, false).await;
    let (tx, rx) = mpsc::channel(4);
    let (client, stdin) = tokio::io::duplex(1024);
    let out = Sink::default();
    let io = ProcessIo {
        tty: true,
        stdin: Some(Box::new(stdin)),
        stdout: Some(Box::new(out.clone())),
        stderr: None,
        resize: Some(rx),
    };
    tx.send(WindowSize {
        width: 100,
        height: 30,
    })
    .await
    .unwrap();
    let drive = async {
        use tokio::io::AsyncWriteExt;
        let mut client = client;
        loop {
            if client.write_all(b"\r").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::future::pending::<()>().await;
    };
    bounded("tty attach", async {
        tokio::select! {
            r = w.runtime.attach(&id, &c.bundle, io, false) => r,
            () = drive => unreachable!(),
        }
    })
    .await
    .unwrap();
    assert!(out.text().contains("size 30 100"), "{}", out.text());
    assert_eq!(c.wait_exit(SECS), 0);
}
