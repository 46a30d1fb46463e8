from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="lttx",
    version="0.1.0",
    description="A data center for distributed Python programs: cloud variables, "
                "channels and files served by one Twisted daemon",
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # twisted.plugins is a namespace shared with Twisted itself: list it by
    # hand (find_packages would miss it) and never ship an __init__.py there.
    packages=find_packages(include=["lttx", "lttx.*"]) + ["twisted.plugins"],
    package_data={"lttx": ["py.typed"], "lttx.web": ["static/*"],
                  "twisted.plugins": ["lttx_plugin.py"]},
    install_requires=[
        "twisted[tls]>=22.10",
        "service-identity>=21.1",
        "msgpack>=1.0",
        "tqdm>=4.60",
        # The --http side's /metrics (a custom collector over the status report).
        "prometheus_client>=0.16",
    ],
    extras_require={
        # DataFrames and arrays as values (lttx.client.dataframes); the daemon needs none.
        "pandas": ["pandas>=1.5", "pyarrow>=14"],
        "polars": ["polars>=1.0"],
        "numpy": ["numpy>=1.22"],
        # cryptography (also pulled in by twisted[tls]) makes the TLS tests' certificates.
        # selenium drives Debian's chromium + chromium-driver in the status page's tests.
        "test": ["hypothesis>=6.0", "redis>=4.0", "cryptography>=3.3", "import-linter>=2.0",
                 "chinese-calendar>=1.9", "pandas>=1.5", "pyarrow>=14", "polars>=1.0",
                 "numpy>=1.22", "selenium>=4.10"],
        # lttx.compat's judge_is_TradeDay / get_last_TradeDay (the A-share calendar).
        "calendar": ["chinese-calendar>=1.9"],
        # benchmarks/compare.py's Redis and NATS clients (with apt-get install
        # redis-server nats-server); run by hand, never by CI.
        "bench": ["redis>=4.0", "hiredis>=2.0", "nats-py>=2.6"],
        "dev": ["hypothesis>=6.0", "redis>=4.0", "cryptography>=3.3", "import-linter>=2.0",
                "pandas>=1.5", "pyarrow>=14", "polars>=1.0", "numpy>=1.22",
                "selenium>=4.10", "flake8", "mypy", "mypy-zope"],
    },
    entry_points={"console_scripts": ["lttx = lttx.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Office/Business :: Financial :: Investment",
    ],
)
