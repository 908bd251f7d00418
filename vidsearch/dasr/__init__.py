"""The DASR / DASR* region engine (Xiao, Zhao et al., ACM TOMM 2022)."""
