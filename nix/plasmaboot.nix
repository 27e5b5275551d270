# The plasmaboot package: the `plasmaboot` CLI (serve, render, the installer agent and the
# first-boot agent). Name, version and description come from pyproject.toml; the
# dependencies are pyproject's, by their nixpkgs attribute names.
#
#   nix-build -E 'with import <nixpkgs> { }; callPackage ./nix/plasmaboot.nix { }'
#
# `plasmaboot render nixos` copies this file and the source it builds next to the rendered
# flake (plasmaboot/), which calls it the same way.
{ lib, python3Packages }:
let
  project = (lib.importTOML ../pyproject.toml).project;
in
python3Packages.buildPythonApplication {
  pname = project.name;
  inherit (project) version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      (lib.fileset.fileFilter (file: !file.hasExt "pyc") ../src/plasmaboot)
    ];
  };

  build-system = [ python3Packages.setuptools ];

  dependencies = with python3Packages; [
    aiohttp
    cryptography
    httpx
    jinja2
    jsonschema
    prometheus-client
    psycopg
    psycopg-pool
    pydantic
    pyghmi
    pyyaml
    rich
    ruamel-yaml
    structlog
    typer
  ];

  pythonImportsCheck = [ "plasmaboot.cli" "plasmaboot.firstboot.cli" "plasmaboot.agent.cli" ];

  meta = {
    inherit (project) description;
    mainProgram = "plasmaboot";
  };
}
