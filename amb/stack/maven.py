"""Resolve Apache Kafka and its runtime dependencies from Maven Central into the shared cache.

Why Maven rather than the release tarball: Maven Central is one of the registries reachable from
every machine this project runs on, and ``mvn`` verifies checksums for us. The result is a flat
``libs/`` directory, exactly what the tarball's ``libs/`` holds, plus a log4j2 binding.

The install is idempotent: a marker file written last (``installed.json``) means the directory is
complete, so a second call costs one ``stat``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from amb.config import Settings
from amb.errors import AmbError
from amb.stack.process import file_lock

LOG4J_VERSION = "2.24.3"  # the log4j2 line Kafka 4.1 itself ships with
MARKER = "installed.json"

JAVA_HINT = "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"
MAVEN_HINT = "install Maven (apt-get install maven)"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>amb.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version>
    </dependency>
    <!-- Kafka 4 logs through slf4j 1.7 -> log4j2; the broker artifact leaves the binding to us. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


@dataclass(frozen=True)
class KafkaDist:
    """An installed Kafka: ``libs/`` holds every jar the broker and its tools need."""

    version: str
    home: Path

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @property
    def classpath(self) -> str:
        """A JVM wildcard classpath (expanded by ``java`` itself, so the argv stays short)."""
        return str(self.libs / "*")

    @property
    def installed(self) -> bool:
        return (self.home / MARKER).is_file()


def dist_for(settings: Settings) -> KafkaDist:
    return KafkaDist(settings.kafka_version, settings.cache_dir / f"kafka-{settings.kafka_version}")


def require_tool(name: str, hint: str) -> str:
    """Absolute path of ``name`` on PATH, or a one-line AmbError saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise AmbError(f"{name} not found on PATH: {hint}")
    return path


def install(settings: Settings, echo: Callable[[str], None] = print) -> KafkaDist:
    """Make sure Kafka ``settings.kafka_version`` is in the cache; return it. Safe to call often."""
    dist = dist_for(settings)
    if dist.installed:
        return dist
    with file_lock(settings.cache_dir / f".kafka-{dist.version}.lock"):
        if dist.installed:  # another process finished it while we waited for the lock
            return dist
        mvn = require_tool("mvn", MAVEN_HINT)
        require_tool("java", JAVA_HINT)
        echo(
            f"installing Kafka {dist.version}: resolving org.apache.kafka:kafka_2.13:{dist.version} and its "
            f"runtime dependencies from Maven Central into {dist.home} (first time only) ..."
        )
        started = time.monotonic()
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".kafka-{dist.version}-", dir=settings.cache_dir) as tmp:
            work = Path(tmp)
            (work / "pom.xml").write_text(_POM.format(kafka=dist.version, log4j=LOG4J_VERSION))
            libs = work / "libs"
            proc = subprocess.run(
                [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(work / "pom.xml"),
                 "dependency:copy-dependencies", "-DincludeScope=runtime",
                 f"-DoutputDirectory={libs}"],
                cwd=work, capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise AmbError(
                    f"mvn could not resolve Kafka {dist.version} from Maven Central "
                    f"(check AMB_KAFKA_VERSION and network access): {_first_error(proc.stdout + proc.stderr)}"
                )
            jars = sorted(p.name for p in libs.glob("*.jar"))
            if f"kafka_2.13-{dist.version}.jar" not in jars:
                raise AmbError(f"mvn finished but kafka_2.13-{dist.version}.jar is missing from {libs}")
            if dist.home.exists():  # a half-finished earlier attempt without a marker
                shutil.rmtree(dist.home)
            dist.home.mkdir(parents=True)
            libs.replace(dist.libs)
        size = sum(p.stat().st_size for p in dist.libs.glob("*.jar"))
        marker = {"kafka_version": dist.version, "log4j_version": LOG4J_VERSION, "jars": jars, "bytes": size}
        (dist.home / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        echo(f"installed Kafka {dist.version}: {len(jars)} jars, {size / 1e6:.0f} MB in "
             f"{time.monotonic() - started:.1f} s")
    return dist


def _first_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[ERROR]" in ln]
    picked = (errors or lines or ["no output"])[0]
    return picked.replace("[ERROR] ", "")[:400]
