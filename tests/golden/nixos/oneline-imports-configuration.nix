{ config, pkgs, ... }:
{
  imports = [ ./hardware-configuration.nix ];
  boot.loader.systemd-boot.enable = true; # from the installer
  boot.loader.efi.canTouchEfiVariables = true;
  system.stateVersion = "24.05";
}
